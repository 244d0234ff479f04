pub fn render(_e: &[super::aggregate::EnvReport]) -> String {
    String::new()
}
