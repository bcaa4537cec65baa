//! A large upload in 8 MiB fragments: byte-identical result and bounded server memory.
//! Size: `BITS_LARGE_UPLOAD_MIB` (default 256; the issue figure was taken with 1024).

use crate::common::*;
use std::io::Read;

#[test]
fn large_upload_is_identical_and_memory_stays_flat() {
    let mib: u64 = std::env::var("BITS_LARGE_UPLOAD_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    const FRAG: usize = 8 << 20;
    let total = mib << 20;
    let s = Server::start("[[vdir]]\nmax_fragment_size = 16777216");
    let mut c = s.conn();
    let r = c.create("/upload/big.bin");
    r.assert_ack(200, None);
    let sid = r.session();
    let started = std::time::Instant::now();
    let mut off = 0u64;
    let mut i = 0u64;
    while off < total {
        let len = FRAG.min((total - off) as usize);
        let chunk = pattern(len, i);
        let r = c.fragment("/upload/big.bin", &sid, off, &chunk, total);
        r.assert_ack(200, None);
        off += len as u64;
        i += 1;
        assert_eq!(r.received(), Some(off));
    }
    let secs = started.elapsed().as_secs_f64();
    c.close("/upload/big.bin", &sid).assert_ack(200, None);
    let rss = s.peak_rss_kib();
    eprintln!(
        "uploaded {mib} MiB in 8 MiB fragments: {:.1} MiB/s, bitsd peak RSS (VmHWM) {} KiB",
        mib as f64 / secs,
        rss
    );
    assert!(rss < 64 * 1024, "peak RSS {rss} KiB");
    let mut f = std::fs::File::open(s.upload_path("big.bin")).unwrap();
    assert_eq!(f.metadata().unwrap().len(), total);
    let mut buf = vec![0u8; FRAG];
    let mut i = 0u64;
    let mut off = 0u64;
    while off < total {
        let len = FRAG.min((total - off) as usize);
        f.read_exact(&mut buf[..len]).unwrap();
        assert!(buf[..len] == pattern(len, i)[..], "fragment {i} differs");
        off += len as u64;
        i += 1;
    }
}
