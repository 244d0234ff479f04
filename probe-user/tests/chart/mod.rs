//! The Helm chart of deploy/helm, rendered the way Helm renders it for the few template forms
//! it uses: for the chart test (probe-user/tests/deploy.rs) and the container tests, which run
//! the image with the settings of the DaemonSet the chart renders.

use serde_json::Value;

// Compiled in: the test VMs carry the test binaries, not the source tree.
/// Files the templates read with `.Files.Get`.
pub const FILES: [(&str, &str); 1] = [(
    "dashboards/hopprobe.json",
    include_str!("../../../deploy/helm/hopprobe/dashboards/hopprobe.json"),
)];
pub const CHART: &str = include_str!("../../../deploy/helm/hopprobe/Chart.yaml");
pub const VALUES: &str = include_str!("../../../deploy/helm/hopprobe/values.yaml");
pub const TEMPLATES: [(&str, &str); 3] = [
    (
        "daemonset.yaml",
        include_str!("../../../deploy/helm/hopprobe/templates/daemonset.yaml"),
    ),
    (
        "dashboard.yaml",
        include_str!("../../../deploy/helm/hopprobe/templates/dashboard.yaml"),
    ),
    (
        "rbac.yaml",
        include_str!("../../../deploy/helm/hopprobe/templates/rbac.yaml"),
    ),
];

pub fn documents(text: &str, what: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .unwrap_or_else(|e| panic!("{what} is not YAML: {e}"))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// The chart's default values with `set` applied (`("a.b", value)`, as `helm --set`).
pub fn values(set: &[(&str, Value)]) -> Value {
    let mut values = documents(VALUES, "values.yaml").pop().expect("values");
    for (path, value) in set {
        let mut v = &mut values;
        for part in path.split('.') {
            v = &mut v[part];
        }
        *v = value.clone();
    }
    values
}

/// Every object the chart renders with `values`, release `hopprobe`.
pub fn objects(values: &Value) -> Vec<Value> {
    TEMPLATES
        .iter()
        .flat_map(|(name, text)| documents(&render(text, values, "hopprobe"), name))
        .collect()
}

fn lookup<'a>(values: &'a Value, expr: &str) -> &'a Value {
    let mut v = values;
    for part in expr[".Values.".len()..].split('.') {
        v = &v[part];
    }
    v
}

/// Keeps the lines of the branches `values` takes.
fn conditionals(template: &str, values: &Value) -> String {
    // For each open `if`: whether its branch now being read is taken.
    let mut open: Vec<bool> = Vec::new();
    let mut out = String::new();
    for line in template.split_inclusive('\n') {
        let t = line.trim();
        if let Some(cond) = t.strip_prefix("{{- if ").and_then(|c| c.strip_suffix("}}")) {
            let taken = match lookup(values, cond.trim()) {
                Value::Bool(b) => *b,
                Value::Null => false,
                Value::String(s) => !s.is_empty(),
                other => panic!("{cond} is not a condition: {other}"),
            };
            open.push(taken);
        } else if t == "{{- else }}" {
            let last = open.last_mut().expect("else inside if");
            *last = !*last;
        } else if t == "{{- end }}" {
            open.pop().expect("end closes an if");
        } else if open.iter().all(|&b| b) {
            out.push_str(line);
        }
    }
    assert!(open.is_empty(), "an if is not closed");
    out
}

/// Renders one of the chart's templates with `values`, for the expressions they use:
/// `{{ .Values.a.b }}`, `{{ .Release.Name }}`, `{{ .Release.Namespace }}`,
/// `{{ .Files.Get "path" | indent N }}`, and `{{- if .Values.a.b }}` / `{{- else }}` /
/// `{{- end }}` each on a line of its own. Anything else fails the test, which keeps the chart
/// simple enough to check this way.
pub fn render(template: &str, values: &Value, release: &str) -> String {
    let template = conditionals(template, values);
    let mut out = String::new();
    let mut rest = template.as_str();
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").expect("closed expression") + start;
        let expr = rest[start + 2..end].trim();
        let value = match expr {
            ".Release.Name" | ".Release.Namespace" => release.to_owned(),
            e if e.starts_with(".Values.") => match lookup(values, e) {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => panic!("{e} is not a scalar: {other}"),
            },
            e if e.starts_with(".Files.Get ") => {
                let (path, pipe) = e[".Files.Get ".len()..]
                    .split_once(" | indent ")
                    .expect("`.Files.Get \"path\" | indent N`");
                let path = path.trim_matches('"');
                let text = FILES
                    .iter()
                    .find(|(p, _)| *p == path)
                    .unwrap_or_else(|| panic!("{path} is not in FILES"))
                    .1;
                let pad = " ".repeat(pipe.trim().parse().expect("indent N"));
                text.lines()
                    .map(|l| format!("{pad}{l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
            other => panic!("template expression this check cannot render: {other}"),
        };
        out.push_str(&value);
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}
