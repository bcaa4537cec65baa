//! `bench publish`: one large upload through one bitsd node on SeaweedFS, fragment by fragment,
//! against a raw S3 PUT of the same bytes to the same SeaweedFS in the same run.
//!
//! What it shows is whether publishing costs work proportional to the file: the final
//! fragment's Ack (which publishes) is compared with the median Fragment Ack, and the ingest
//! throughput (Create-Session to the final Ack) with the raw PUT (`curl -T` of the same bytes,
//! one request).

use crate::stats::{median, percentile};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::report::{Headline, Report};
use crate::seaweed::SeaweedFs;
use crate::server::Bitsd;
use crate::wire::{upload, Conn};

/// One run's figures.
struct Run {
    fragment_ms: Vec<f64>,
    final_ms: f64,
    ingest_mib_s: f64,
    raw_mib_s: f64,
    /// Fragment-sized UploadParts sent one after another straight to S3: what any server
    /// that acknowledges each fragment once it is stored could reach at best.
    parts_mib_s: f64,
}

pub fn publish(mib: u64, fragment_mib: u64, runs: usize) -> Result<Report> {
    let (mib, fragment_mib, runs) = (mib.max(1), fragment_mib.max(1), runs.max(1));
    let base = Path::new("target").join("bench-data");
    std::fs::create_dir_all(&base)?;
    let started = Instant::now();
    eprintln!("starting SeaweedFS (loopback only)...");
    let weed = SeaweedFs::start("bench-publish");
    let fragment = (fragment_mib << 20) as usize;
    let body: Vec<u8> = (0..fragment)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect();
    // The raw PUT sends the same bytes: the fragment pattern repeated, from a file.
    let work = tempfile::tempdir_in(&base)?;
    let file = work.path().join("upload.bin");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file)?);
        let mut left = mib << 20;
        while left > 0 {
            let n = left.min(body.len() as u64) as usize;
            f.write_all(&body[..n])?;
            left -= n as u64;
        }
        f.flush()?;
    }
    let config = format!(
        "session_lock_timeout = \"10s\"\n\
         [storage]\nbackend = \"s3\"\nendpoint = \"{endpoint}\"\nbucket = \"{bucket}\"\n\
         prefix = \"spool\"\naccess_key = \"any\"\nsecret_key = \"any\"\n\
         allow_http = true\nrequest_timeout = \"120s\"\n\
         [[vdir]]\nprefix = \"/upload/\"\nroot = \"uploads\"\n\
         download_enabled = false\nmax_fragment_size = {max}\n",
        endpoint = weed.endpoint,
        bucket = weed.bucket,
        max = fragment
    );
    let node_dir = tempfile::tempdir_in(&base)?;
    let node = Bitsd::start(node_dir.path(), &config)?;
    // Warm-up (not measured): SeaweedFS volume growth, connections.
    let mut conn = Conn::open(node.addr)?;
    upload(&mut conn, "/upload/warm.bin", 64 << 20, &body).context("warm-up")?;
    raw_put(&weed, &file, "raw/warm.bin").context("raw warm-up")?;
    let mut all = Vec::new();
    for run in 0..runs {
        let total = mib << 20;
        // Alternate the order so neither always meets the fuller store.
        let (raw_first, path) = (run % 2 == 0, format!("/upload/run{run}.bin"));
        let mut raw_secs = 0.0;
        let parts_secs = sequential_parts(&weed, &body, total, &format!("parts/run{run}.bin"))?;
        if raw_first {
            raw_secs = raw_put(&weed, &file, &format!("raw/run{run}.bin"))?;
        }
        let t0 = Instant::now();
        let acks = upload(&mut conn, &path, total, &body)?;
        let ingest = t0.elapsed().as_secs_f64();
        if !raw_first {
            raw_secs = raw_put(&weed, &file, &format!("raw/run{run}.bin"))?;
        }
        verify(
            &weed,
            &file,
            &format!("uploads{path}", path = &path["/upload".len()..]),
        )?;
        let (last, fragments) = acks.split_last().context("no fragment")?;
        let r = Run {
            fragment_ms: fragments.to_vec(),
            final_ms: *last,
            ingest_mib_s: mib as f64 / ingest,
            raw_mib_s: mib as f64 / raw_secs,
            parts_mib_s: mib as f64 / parts_secs,
        };
        eprintln!(
            "run {}: Fragment Ack median {:.0} ms, p90 {:.0} ms, max {:.0} ms; final Ack {:.0} ms; \
             ingest {:.1} MiB/s, raw PUT {:.1} MiB/s, sequential parts {:.1} MiB/s",
            run + 1,
            median(&r.fragment_ms),
            percentile(&r.fragment_ms, 0.9),
            percentile(&r.fragment_ms, 1.0),
            r.final_ms,
            r.ingest_mib_s,
            r.raw_mib_s,
            r.parts_mib_s
        );
        all.push(r);
    }
    drop(node);
    drop(weed);
    let frag = median(
        &all.iter()
            .map(|r| median(&r.fragment_ms))
            .collect::<Vec<_>>(),
    );
    let last = median(&all.iter().map(|r| r.final_ms).collect::<Vec<_>>());
    let ingest = median(&all.iter().map(|r| r.ingest_mib_s).collect::<Vec<_>>());
    let raw = median(&all.iter().map(|r| r.raw_mib_s).collect::<Vec<_>>());
    let parts = median(&all.iter().map(|r| r.parts_mib_s).collect::<Vec<_>>());
    let mut out = String::new();
    writeln!(out, "| figure | value | target |")?;
    writeln!(out, "|---|---|---|")?;
    writeln!(out, "| median Fragment Ack | {frag:.0} ms | |")?;
    writeln!(
        out,
        "| final Ack (publishes) | {last:.0} ms ({:.1} x median) | <= 3 x |",
        last / frag
    )?;
    writeln!(
        out,
        "| ingest, Create-Session to final Ack | {ingest:.1} MiB/s | |"
    )?;
    writeln!(
        out,
        "| raw S3 PUT of the same bytes (`curl -T`) | {raw:.1} MiB/s | |"
    )?;
    writeln!(out, "| ingest / raw PUT | {:.2} | >= 0.7 |", ingest / raw)?;
    let unit = if fragment_mib >= 5 {
        "UploadParts"
    } else {
        "PUTs (below the 5 MiB part minimum)"
    };
    writeln!(
        out,
        "| sequential {fragment_mib} MiB {unit} straight to S3 (the ceiling for \
         per-fragment durability) | {parts:.1} MiB/s ({:.2} x raw PUT) | |",
        parts / raw
    )?;
    writeln!(
        out,
        "| ingest / sequential parts | {:.2} | |",
        ingest / parts
    )?;
    writeln!(
        out,
        "({mib} MiB in {fragment_mib} MiB fragments through one bitsd node on one SeaweedFS, \
         median of {runs} run(s), raw PUT and upload alternating; wall time {:.0} s)",
        started.elapsed().as_secs_f64()
    )?;
    let met = last <= 3.0 * frag && ingest >= 0.7 * raw;
    Ok(Report::table(out).with_headline(Headline {
        figure: format!("Publish on S3: {mib} MiB in {fragment_mib} MiB fragments"),
        value: format!("final Ack {last:.0} ms, ingest {ingest:.1} MiB/s"),
        baseline: format!("median Fragment Ack {frag:.0} ms, raw PUT {raw:.1} MiB/s"),
        ratio: ingest / raw,
        target: "final <= 3 x median Fragment Ack, ingest >= 0.7 x raw PUT".to_string(),
        met: Some(met),
    }))
}

/// One PUT of `file` to `key` with curl (SeaweedFS without identities takes it unsigned);
/// returns the seconds it took.
fn raw_put(weed: &SeaweedFs, file: &Path, key: &str) -> Result<f64> {
    let url = format!("{}/{}/{key}", weed.endpoint, weed.bucket);
    let t = Instant::now();
    let out = Command::new("curl")
        .args(["-sS", "-f", "-o", "/dev/null", "-T"])
        .arg(file)
        .arg(&url)
        .output()
        .context("running curl")?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "raw PUT with curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(secs)
}

/// `total` bytes (`body` repeated, one fragment at a time) sent straight to the S3 server
/// with object_store (unsigned payload, as bitsd's streamed parts), each request once the
/// previous one is stored: the fastest a server that acknowledges a fragment only once it is
/// stored could ingest one session on this store. Fragments of at least 5 MiB are parts of one
/// multipart upload at `key`; smaller ones (below S3's part minimum) are objects of their own
/// below it. Returns the seconds from the first request to the last answer.
fn sequential_parts(weed: &SeaweedFs, body: &[u8], total: u64, key: &str) -> Result<f64> {
    use object_store::multipart::MultipartStore;
    use object_store::ObjectStoreExt;
    // object_store's client wants a process-wide rustls provider even for plain http.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&weed.endpoint)
        .with_bucket_name(&weed.bucket)
        .with_region("us-east-1")
        .with_access_key_id("any")
        .with_secret_access_key("any")
        .with_allow_http(true)
        .with_unsigned_payload(true)
        .build()?;
    let body = bytes::Bytes::copy_from_slice(body);
    let as_parts = body.len() >= 5 << 20;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let path = object_store::path::Path::from(key);
        let t = Instant::now();
        let id = if as_parts {
            Some(store.create_multipart(&path).await?)
        } else {
            None
        };
        let mut parts = Vec::new();
        let mut sent = 0u64;
        while sent < total {
            let n = (total - sent).min(body.len() as u64) as usize;
            let bytes = body.slice(..n);
            match &id {
                Some(id) => parts.push(store.put_part(&path, id, parts.len(), bytes.into()).await?),
                None => {
                    let piece = object_store::path::Path::from(format!("{key}/{sent:020}"));
                    store.put(&piece, bytes.into()).await?;
                }
            }
            sent += n as u64;
        }
        if let Some(id) = id {
            store.complete_multipart(&path, &id, parts).await?;
        }
        Ok(t.elapsed().as_secs_f64())
    })
}

/// The published object holds exactly the uploaded bytes (not timed).
fn verify(weed: &SeaweedFs, file: &Path, key: &str) -> Result<()> {
    let url = format!("{}/{}/{key}", weed.endpoint, weed.bucket);
    let ok = Command::new("sh")
        .arg("-c")
        .arg("curl -sSf \"$1\" | cmp -s - \"$2\"")
        .args(["sh", &url])
        .arg(file)
        .status()
        .context("running curl | cmp")?
        .success();
    if !ok {
        bail!("published object {key} differs from the uploaded bytes");
    }
    Ok(())
}
