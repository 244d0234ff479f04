//! Test fixtures shared by hopprobe's integration tests: root gating, network namespaces with
//! guards that remove them on drop (also when a test panics), and leftover checks.

pub mod lab;
pub mod leftovers;
pub mod netns;
pub mod probe;
pub mod root;
