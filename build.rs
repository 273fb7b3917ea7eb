// With the cargo feature `libzfs-core`, generate Rust bindings for libzfs_core (and the
// libnvpair calls needed to build its arguments) with bindgen, and link the libraries.
// Without the feature this does nothing, so a default build needs neither clang nor the
// ZFS headers.
//
// Where the headers are:
// - FreeBSD 13+: the OpenZFS sources in /usr/src (install the src component), whose
//   libspl headers must come before /usr/include. Linked: zfs_core, nvpair, spl, and
//   zutil where it exists.
// - Linux: libzfslinux-dev (Debian contrib), found through pkg-config (`libzfs_core`),
//   compiled with -D_GNU_SOURCE like OpenZFS itself.
// - PGZFS_LZC_INCLUDE (':'-separated directories) and PGZFS_LZC_LIBDIR override both.
//
// lzc signatures changed over time. What pgzfs calls has been stable since OpenZFS 0.8
// except lzc_receive, which gained `raw` in 0.8; older headers (0.7) are refused with
// a message rather than miscompiled.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PGZFS_LZC_INCLUDE");
    println!("cargo:rerun-if-env-changed=PGZFS_LZC_LIBDIR");
    #[cfg(feature = "libzfs-core")]
    lzc::generate();
}

#[cfg(feature = "libzfs-core")]
mod lzc {
    use std::env;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    fn fail(message: &str) -> ! {
        eprintln!("\nerror: pgzfs feature libzfs-core: {message}\n");
        std::process::exit(1);
    }

    fn split_dirs(value: &str) -> Vec<PathBuf> {
        value
            .split(':')
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .collect()
    }

    /// `-I` directories and libraries from `pkg-config libzfs_core`, if it knows it.
    fn pkg_config() -> Option<(Vec<PathBuf>, Vec<String>, Vec<PathBuf>)> {
        let run = |arg: &str| -> Option<String> {
            let out = Command::new("pkg-config")
                .args([arg, "libzfs_core"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let cflags = run("--cflags")?;
        let libs = run("--libs")?;
        let includes = cflags
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("-I"))
            .map(PathBuf::from)
            .collect();
        let names = libs
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("-l"))
            .map(String::from)
            .collect();
        let dirs = libs
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("-L"))
            .map(PathBuf::from)
            .collect();
        Some((includes, names, dirs))
    }

    pub fn generate() {
        let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
        let override_include = env::var("PGZFS_LZC_INCLUDE").ok();
        let override_libdir = env::var("PGZFS_LZC_LIBDIR").ok();

        let mut libdirs: Vec<PathBuf> = Vec::new();
        let mut defines: Vec<&str> = Vec::new();
        let (mut includes, libs): (Vec<PathBuf>, Vec<String>) = match os.as_str() {
            "freebsd" => {
                let src = Path::new("/usr/src/sys/contrib/openzfs");
                let includes = vec![
                    src.join("include"),
                    src.join("lib/libspl/include"),
                    src.join("lib/libspl/include/os/freebsd"),
                    src.join("include/os/freebsd"),
                    PathBuf::from("/usr/include"),
                ];
                let mut libs: Vec<String> = vec!["zfs_core".into(), "nvpair".into(), "spl".into()];
                let has_zutil = ["/lib", "/usr/lib"]
                    .iter()
                    .any(|d| Path::new(d).join("libzutil.so").exists());
                if has_zutil {
                    libs.push("zutil".into());
                }
                // As FreeBSD's own build of libzfs_core (src/cddl/lib/libzfs_core) does.
                defines.extend(["-DIN_BASE", "-D__BSD_VISIBLE=1", "-DHAVE_ISSETUGID"]);
                (includes, libs)
            }
            "linux" => {
                defines.push("-D_GNU_SOURCE");
                match pkg_config() {
                    Some((includes, libs, dirs)) => {
                        libdirs = dirs;
                        (includes, libs)
                    }
                    None => (
                        vec!["/usr/include/libspl".into(), "/usr/include/libzfs".into()],
                        vec!["zfs_core".into(), "nvpair".into()],
                    ),
                }
            }
            other => {
                if override_include.is_none() {
                    fail(&format!(
                        "no known header location for target OS {other:?}; set PGZFS_LZC_INCLUDE and PGZFS_LZC_LIBDIR"
                    ));
                }
                (Vec::new(), vec!["zfs_core".into(), "nvpair".into()])
            }
        };
        if let Some(dirs) = &override_include {
            includes = split_dirs(dirs);
        }
        if let Some(dirs) = &override_libdir {
            libdirs = split_dirs(dirs);
        }

        let header = includes
            .iter()
            .map(|d| d.join("libzfs_core.h"))
            .find(|h| h.is_file())
            .unwrap_or_else(|| {
                fail(&format!(
                    "libzfs_core.h not found in {}. On Debian install libzfslinux-dev (contrib); on FreeBSD \
                     install the OpenZFS sources under /usr/src; or point PGZFS_LZC_INCLUDE at the headers",
                    includes
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            });
        println!("cargo:rerun-if-changed={}", header.display());
        let text = std::fs::read_to_string(&header)
            .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", header.display())));
        check_header(&text, &header);

        let mut builder = bindgen::Builder::default()
            .header_contents("pgzfs_lzc.h", "#include <libzfs_core.h>\n")
            .allowlist_function("lzc_.*")
            .allowlist_function("libzfs_core_.*")
            .allowlist_function(
                "nvlist_(alloc|free|add_boolean|add_string|add_nvlist|next_nvpair|exists)",
            )
            .allowlist_function("nvpair_(name|value_int32)")
            .allowlist_var("NV_UNIQUE_NAME")
            .allowlist_type("lzc_send_flags")
            .bitfield_enum("lzc_send_flags")
            .layout_tests(false)
            .derive_default(false);
        for define in &defines {
            builder = builder.clang_arg(*define);
        }
        for dir in &includes {
            builder = builder.clang_arg(format!("-I{}", dir.display()));
        }
        let bindings = builder.generate().unwrap_or_else(|e| {
            fail(&format!(
                "bindgen could not process {} ({e}); is libclang installed (libclang-dev / devel/llvm)?",
                header.display()
            ))
        });
        let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR")).join("lzc_bindings.rs");
        bindings
            .write_to_file(&out)
            .unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", out.display())));

        for dir in &libdirs {
            println!("cargo:rustc-link-search=native={}", dir.display());
        }
        for lib in &libs {
            println!("cargo:rustc-link-lib={lib}");
        }
    }

    /// Refuse headers whose lzc_receive is not the 0.8+/2.x one pgzfs calls.
    fn check_header(text: &str, header: &Path) {
        let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let Some(start) = flat.find("lzc_receive(") else {
            fail(&format!("{} declares no lzc_receive", header.display()));
        };
        let decl = &flat[start..];
        let decl = &decl[..decl.find(';').unwrap_or(decl.len())];
        let params = decl.replace(", ", ",");
        if params.contains("boolean_t,boolean_t,int)") {
            return;
        }
        if params.contains("boolean_t,int)") {
            fail(&format!(
                "{} is an OpenZFS 0.7 (or older) header: its lzc_receive has no `raw` argument. pgzfs \
                 supports libzfs_core from OpenZFS 0.8 on; build without --features libzfs-core to use zfs(8)",
                header.display()
            ));
        }
        fail(&format!(
            "{} declares lzc_receive as `{decl}`, which pgzfs does not know; build without \
             --features libzfs-core to use zfs(8)",
            header.display()
        ));
    }
}
