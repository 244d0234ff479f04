fn main() {
    // Nothing to generate: the dependency on aya-build only pins its version.
}
