//! The fixtures' guards remove what they created even when a test panics.

use testkit::{leftovers, netns::Link};

#[test]
fn namespaces_are_removed_when_a_test_panics() {
    if !testkit::root::available("namespaces_are_removed_when_a_test_panics") {
        return;
    }
    let mut names = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let link = Link::new().expect("create namespaces");
        names.push(link.left.name.clone());
        names.push(link.right.name.clone());
        assert!(!leftovers::network().is_empty(), "positive control");
        panic!("a failing test");
    }));
    assert!(result.is_err());
    assert_eq!(names.len(), 2);
    assert_eq!(leftovers::network(), Vec::<String>::new());
}
