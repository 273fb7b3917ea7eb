// Nothing to generate yet: the libzfs_core bindings (cargo feature `libzfs-core`)
// arrive with the libzfs_core issue. Keeping build.rs in place fixes the layout now.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
}
