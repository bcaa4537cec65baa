//! `bench publish-azure`: `bench publish`'s Azure twin. One large upload through one bitsd node
//! on Azurite (`backend = "azure"`), fragment by fragment, against the same bytes sent straight
//! to Azurite as sequential fragment-sized `Put Block`s and one `Put Block List` (what any
//! server that acknowledges a fragment only once it is stored could reach at best).
//!
//! What it shows: the final fragment's Ack (which publishes with one `Put Block List`) against
//! the median Fragment Ack, and the node's peak resident memory (`VmHWM`), which must not grow
//! with the upload (fragments are streamed into blocks, not buffered).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::azurite::{Azurite, ACCOUNT, KEY};
use crate::report::{Headline, Report};
use crate::server::Bitsd;
use crate::stats::{median, percentile};
use crate::wire::{upload, Conn};

struct Run {
    fragment_ms: Vec<f64>,
    final_ms: f64,
    ingest_mib_s: f64,
    blocks_mib_s: f64,
}

fn client(azurite: &Azurite) -> Result<object_store::azure::MicrosoftAzure> {
    Ok(azurite.client())
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

pub fn publish_azure(mib: u64, fragment_mib: u64, runs: usize) -> Result<Report> {
    let (mib, fragment_mib, runs) = (mib.max(1), fragment_mib.max(1), runs.max(1));
    let base = Path::new("target").join("bench-data");
    std::fs::create_dir_all(&base)?;
    let started = Instant::now();
    eprintln!("starting Azurite (loopback only)...");
    let Some(azurite) = Azurite::start("bench-publish") else {
        bail!("azurite-blob is not installed (scripts/test.sh installs it)");
    };
    let fragment = (fragment_mib << 20) as usize;
    let body: Vec<u8> = (0..fragment)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect();
    let config = format!(
        "session_lock_timeout = \"10s\"\n\
         [storage]\nbackend = \"azure\"\naccount = \"{ACCOUNT}\"\ncontainer = \"{container}\"\n\
         prefix = \"spool\"\naccess_key = \"{KEY}\"\nendpoint = \"{endpoint}\"\n\
         allow_http = true\nrequest_timeout = \"120s\"\n\
         [[vdir]]\nprefix = \"/upload/\"\nroot = \"uploads\"\n\
         download_enabled = false\nmax_fragment_size = {max}\n",
        container = azurite.container,
        endpoint = azurite.endpoint,
        max = fragment
    );
    let node_dir = tempfile::tempdir_in(&base)?;
    let node = Bitsd::start(node_dir.path(), &config)?;
    let mut conn = Conn::open(node.addr)?;
    upload(&mut conn, "/upload/warm.bin", 64 << 20, &body).context("warm-up")?;
    let rss_warm = peak_rss_kib(node.pid());
    let store = client(&azurite)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut all = Vec::new();
    for run in 0..runs {
        let total = mib << 20;
        let path = format!("/upload/run{run}.bin");
        let blocks_secs = rt.block_on(sequential_blocks(
            &store,
            &body,
            total,
            &format!("blocks/run{run}.bin"),
        ))?;
        let t0 = Instant::now();
        let acks = upload(&mut conn, &path, total, &body)?;
        let ingest = t0.elapsed().as_secs_f64();
        rt.block_on(verify(
            &store,
            &body,
            total,
            &format!("uploads/run{run}.bin"),
        ))?;
        let (last, fragments) = acks.split_last().context("no fragment")?;
        let r = Run {
            fragment_ms: fragments.to_vec(),
            final_ms: *last,
            ingest_mib_s: mib as f64 / ingest,
            blocks_mib_s: mib as f64 / blocks_secs,
        };
        eprintln!(
            "run {}: Fragment Ack median {:.0} ms, p90 {:.0} ms, max {:.0} ms; final Ack {:.0} ms; \
             ingest {:.1} MiB/s, sequential blocks {:.1} MiB/s",
            run + 1,
            median(&r.fragment_ms),
            percentile(&r.fragment_ms, 0.9),
            percentile(&r.fragment_ms, 1.0),
            r.final_ms,
            r.ingest_mib_s,
            r.blocks_mib_s
        );
        all.push(r);
    }
    let rss_peak = peak_rss_kib(node.pid());
    drop(node);
    drop(azurite);
    let frag = median(
        &all.iter()
            .map(|r| median(&r.fragment_ms))
            .collect::<Vec<_>>(),
    );
    let last = median(&all.iter().map(|r| r.final_ms).collect::<Vec<_>>());
    let ingest = median(&all.iter().map(|r| r.ingest_mib_s).collect::<Vec<_>>());
    let blocks = median(&all.iter().map(|r| r.blocks_mib_s).collect::<Vec<_>>());
    let mut out = String::new();
    writeln!(out, "| figure | value | target |")?;
    writeln!(out, "|---|---|---|")?;
    writeln!(out, "| median Fragment Ack | {frag:.0} ms | |")?;
    writeln!(
        out,
        "| final Ack (publishes: one Put Block List) | {last:.0} ms ({:.1} x median) | <= 3 x |",
        last / frag
    )?;
    writeln!(
        out,
        "| ingest, Create-Session to final Ack | {ingest:.1} MiB/s | |"
    )?;
    writeln!(
        out,
        "| sequential {fragment_mib} MiB Put Blocks straight to Azurite | {blocks:.1} MiB/s | |"
    )?;
    writeln!(
        out,
        "| ingest / sequential blocks | {:.2} | |",
        ingest / blocks
    )?;
    writeln!(
        out,
        "| bitsd peak RSS after a 64 MiB warm-up / after all runs | {} / {} MiB | no growth with the upload |",
        rss_warm / 1024,
        rss_peak / 1024
    )?;
    writeln!(
        out,
        "({mib} MiB in {fragment_mib} MiB fragments through one bitsd node on one Azurite, \
         median of {runs} run(s); wall time {:.0} s)",
        started.elapsed().as_secs_f64()
    )?;
    let met = last <= 3.0 * frag;
    Ok(Report::table(out).with_headline(Headline {
        figure: format!("Publish on Azure (Azurite): {mib} MiB in {fragment_mib} MiB fragments"),
        value: format!("final Ack {last:.0} ms, ingest {ingest:.1} MiB/s"),
        baseline: format!("median Fragment Ack {frag:.0} ms, sequential blocks {blocks:.1} MiB/s"),
        ratio: last / frag,
        target: "final <= 3 x median Fragment Ack".to_string(),
        met: Some(met),
    }))
}

/// `total` bytes (`body` repeated) as sequential blocks of one blob, then the block list;
/// the seconds from the first request to the last answer.
async fn sequential_blocks(
    store: &object_store::azure::MicrosoftAzure,
    body: &[u8],
    total: u64,
    key: &str,
) -> Result<f64> {
    use object_store::multipart::MultipartStore;
    let body = bytes::Bytes::copy_from_slice(body);
    let path = object_store::path::Path::from(key);
    let t = Instant::now();
    let id = store.create_multipart(&path).await?;
    let mut parts = Vec::new();
    let mut sent = 0u64;
    while sent < total {
        let n = (total - sent).min(body.len() as u64) as usize;
        parts.push(
            store
                .put_part(&path, &id, parts.len(), body.slice(..n).into())
                .await?,
        );
        sent += n as u64;
    }
    store.complete_multipart(&path, &id, parts).await?;
    Ok(t.elapsed().as_secs_f64())
}

/// The published blob holds exactly the uploaded bytes (not timed).
async fn verify(
    store: &object_store::azure::MicrosoftAzure,
    body: &[u8],
    total: u64,
    key: &str,
) -> Result<()> {
    use futures_util::StreamExt;
    use object_store::ObjectStoreExt;
    let got = store.get(&object_store::path::Path::from(key)).await?;
    let mut stream = got.into_stream();
    let mut at = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        for (i, b) in chunk.iter().enumerate() {
            let want = body[((at + i as u64) % body.len() as u64) as usize];
            if *b != want {
                bail!("published blob {key} differs at byte {}", at + i as u64);
            }
        }
        at += chunk.len() as u64;
    }
    if at != total {
        bail!("published blob {key} has {at} bytes, not {total}");
    }
    Ok(())
}
