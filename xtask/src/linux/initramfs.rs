//! The test initramfs: a newc cpio archive (uncompressed, so the hypervisor can hand it to the
//! kernel as it is) holding busybox, the applet links the init script needs, `/dev/console`
//! and `/dev/null`, the mount points, and `/init` (init.sh, docs/linux-guests.md).

/// `/init`: mounts, runs the test the command line names, prints the result, powers off.
pub const INIT_SCRIPT: &str = include_str!("init.sh");

/// The busybox applets init.sh runs as programs (everything else it uses is an ash built-in),
/// each a symbolic link `/bin/NAME -> busybox`.
pub const APPLETS: &[&str] = &["sh", "mount", "sleep", "poweroff", "nproc", "uname"];

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// The newc header's magic: ASCII cpio with no checksum.
const NEWC_MAGIC: &str = "070701";
/// The name of the last entry, which ends the archive.
const TRAILER: &str = "TRAILER!!!";

/// A newc cpio archive being written. Every entry belongs to root and has time 0, so the same
/// inputs always give the same bytes.
#[derive(Debug, Default)]
pub struct Cpio {
    bytes: Vec<u8>,
    next_inode: u32,
}

impl Cpio {
    pub fn new() -> Cpio {
        Cpio::default()
    }

    /// A directory (`path` without a leading `/`), with permission bits `perm`.
    pub fn dir(&mut self, path: &str, perm: u32) {
        self.entry(path, S_IFDIR | perm, 2, (0, 0), &[]);
    }

    /// A regular file.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) {
        self.entry(path, S_IFREG | perm, 1, (0, 0), data);
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes());
    }

    /// A character device node with device number `major:minor`.
    pub fn char_device(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        self.entry(path, S_IFCHR | perm, 1, (major, minor), &[]);
    }

    /// Ends the archive with its trailer and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.next_inode = 0;
        self.entry(TRAILER, 0, 1, (0, 0), &[]);
        self.bytes
    }

    fn entry(&mut self, name: &str, mode: u32, links: u32, rdev: (u32, u32), data: &[u8]) {
        self.next_inode += 1;
        // The name size counts its NUL.
        let fields = [
            self.next_inode,
            mode,
            0, // uid
            0, // gid
            links,
            0, // mtime
            data.len() as u32,
            0, // major of the device holding the file
            0, // minor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // checksum, unused by newc
        ];
        self.bytes.extend_from_slice(NEWC_MAGIC.as_bytes());
        for f in fields {
            self.bytes.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    /// Header plus name, and data, each end on a 4-byte boundary.
    fn pad(&mut self) {
        while self.bytes.len() % 4 != 0 {
            self.bytes.push(0);
        }
    }
}

/// The initramfs around `busybox` (a static arm64 busybox binary).
pub fn build(busybox: &[u8]) -> Vec<u8> {
    let mut cpio = Cpio::new();
    for dir in ["bin", "dev", "proc", "sys"] {
        cpio.dir(dir, 0o755);
    }
    // Sticky and writable by all, as /tmp always is.
    cpio.dir("tmp", 0o1777);
    // The kernel opens /dev/console for init's stdin, stdout and stderr before init runs, so the
    // node must be in the archive; devtmpfs is mounted over /dev only later, by init.
    cpio.char_device("dev/console", 0o600, 5, 1);
    cpio.char_device("dev/null", 0o666, 1, 3);
    cpio.file("init", 0o755, INIT_SCRIPT.as_bytes());
    cpio.file("bin/busybox", 0o755, busybox);
    for applet in APPLETS {
        cpio.symlink(&format!("bin/{applet}"), "busybox");
    }
    cpio.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One entry read back: name, mode, rdev, data.
    #[derive(Debug, PartialEq)]
    struct Entry {
        name: String,
        mode: u32,
        rdev: (u32, u32),
        data: Vec<u8>,
    }

    /// Reads a newc archive as the kernel does, checking magic and alignment.
    fn read_back(bytes: &[u8]) -> Vec<Entry> {
        let mut entries = Vec::new();
        let mut at = 0;
        loop {
            assert_eq!(at % 4, 0, "entry at {at} is not 4-byte aligned");
            assert_eq!(&bytes[at..at + 6], NEWC_MAGIC.as_bytes());
            let field = |i: usize| {
                let start = at + 6 + i * 8;
                u32::from_str_radix(std::str::from_utf8(&bytes[start..start + 8]).unwrap(), 16).unwrap()
            };
            let (mode, size, rdev, name_size) =
                (field(1), field(6) as usize, (field(9), field(10)), field(11) as usize);
            let name_start = at + 110;
            let name = std::str::from_utf8(&bytes[name_start..name_start + name_size - 1]).unwrap().to_string();
            assert_eq!(bytes[name_start + name_size - 1], 0, "name of {name} is not NUL-terminated");
            let data_start = (name_start + name_size).next_multiple_of(4);
            let data = bytes[data_start..data_start + size].to_vec();
            at = (data_start + size).next_multiple_of(4);
            if name == TRAILER {
                assert_eq!(at, bytes.len(), "bytes after the trailer");
                return entries;
            }
            entries.push(Entry { name, mode, rdev, data });
        }
    }

    #[test]
    fn archive_reads_back() {
        let mut cpio = Cpio::new();
        cpio.dir("a", 0o755);
        cpio.file("a/f", 0o644, b"hello");
        cpio.symlink("a/l", "f");
        cpio.char_device("a/c", 0o600, 5, 1);
        let entries = read_back(&cpio.finish());
        assert_eq!(
            entries,
            [
                Entry { name: "a".into(), mode: 0o040755, rdev: (0, 0), data: vec![] },
                Entry { name: "a/f".into(), mode: 0o100644, rdev: (0, 0), data: b"hello".to_vec() },
                Entry { name: "a/l".into(), mode: 0o120777, rdev: (0, 0), data: b"f".to_vec() },
                Entry { name: "a/c".into(), mode: 0o020600, rdev: (5, 1), data: vec![] },
            ]
        );
    }

    #[test]
    fn initramfs_has_what_init_needs() {
        let bytes = build(b"\x7fELF busybox");
        assert_eq!(bytes, build(b"\x7fELF busybox"), "the archive is reproducible");
        let entries = read_back(&bytes);
        let find = |name: &str| entries.iter().find(|e| e.name == name).unwrap_or_else(|| panic!("no {name}"));
        assert_eq!(find("dev/console").rdev, (5, 1));
        assert_eq!(find("dev/null").rdev, (1, 3));
        assert_eq!(find("init").data, INIT_SCRIPT.as_bytes());
        assert_eq!(find("init").mode & 0o111, 0o111, "init is executable");
        assert_eq!(find("bin/busybox").data, b"\x7fELF busybox");
        for dir in ["proc", "sys", "tmp", "bin", "dev"] {
            assert_eq!(find(dir).mode & S_IFDIR, S_IFDIR, "{dir}");
        }
        for applet in APPLETS {
            assert_eq!(find(&format!("bin/{applet}")).data, b"busybox");
        }
    }

    #[test]
    fn init_script_runs_with_busybox_and_names_its_markers() {
        assert!(INIT_SCRIPT.starts_with("#!/bin/busybox sh\n"));
        for marker in ["LINUX-INIT: started", "LINUX-TEST: PASS", "LINUX-TEST: FAIL", "poweroff -f"] {
            assert!(INIT_SCRIPT.contains(marker), "{marker}");
        }
        // Every applet linked is one the script runs.
        let mut words = INIT_SCRIPT.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
        for applet in APPLETS.iter().filter(|a| **a != "sh") {
            assert!(words.clone().any(|w| w == *applet), "{applet} is linked but unused");
        }
        assert!(words.any(|w| w == "busybox"));
    }

    /// The script is valid shell: `sh -n` parses it without running it (the host's sh is a
    /// POSIX shell, as busybox's ash is).
    #[test]
    fn init_script_parses() {
        let dir = std::env::temp_dir().join(format!("xtask-init-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("init.sh");
        std::fs::write(&script, INIT_SCRIPT).unwrap();
        let status = std::process::Command::new("sh").arg("-n").arg(&script).status();
        std::fs::remove_dir_all(&dir).unwrap();
        match status {
            Ok(status) => assert!(status.success(), "sh -n init.sh failed"),
            Err(e) => panic!("cannot run sh: {e}"),
        }
    }
}
