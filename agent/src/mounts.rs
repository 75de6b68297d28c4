//! The mount table, as qemu-ga sees it (block-device backed filesystems).

/// One mounted filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Mount point.
    pub dir: String,
    /// Filesystem type (ext4, xfs...).
    pub fstype: String,
    /// Mount source (`/dev/vda1`).
    pub source: String,
    /// Device major number.
    pub major: u32,
    /// Device minor number.
    pub minor: u32,
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text, keeping filesystems whose source is a path
/// (skipping pseudo, network, smbfs and cifs filesystems, like qemu-ga).
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut v = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 5 || r.len() < 2 {
            continue;
        }
        let Some((maj, min)) = l[2].split_once(':') else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (maj.parse(), min.parse()) else {
            continue;
        };
        let fstype = unescape_octal(r[0]);
        let source = unescape_octal(r[1]);
        if !source.starts_with('/') || fstype == "smbfs" || fstype == "cifs" {
            continue;
        }
        v.push(Mount {
            dir: unescape_octal(l[4]),
            fstype,
            source,
            major,
            minor,
        });
    }
    v
}

/// The current mount table (block-device filesystems only).
pub fn mounts() -> Vec<Mount> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| parse_mountinfo(&t))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo() {
        let t =
            "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n22 27 0:21 / /proc rw - proc proc rw\n\
                 60 27 7:0 / /tmp/a\\040b rw shared:1 - ext4 /dev/loop0 rw\n";
        let m = parse_mountinfo(t);
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].dir, "/tmp/a b");
        assert_eq!((m[1].major, m[1].minor), (7, 0));
    }
}
