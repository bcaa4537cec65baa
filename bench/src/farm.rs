//! `bench farm`: upload throughput of one bitsd node vs three nodes sharing one SeaweedFS
//! bucket, measured in the same run against the same SeaweedFS.
//!
//! Each case starts its own nodes (`[storage] backend = "s3"`, a fresh key prefix per case so
//! the cases do not see each other's objects), warms them up, then runs `concurrency` client
//! threads that each upload `rounds` files of `file_mib` MiB in 1 MiB fragments
//! (Create-Session, fragments, Close-Session on keep-alive connections). With several nodes
//! every request goes to the next node in turn, as a round-robin load balancer would send it.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Barrier;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};

use crate::report::{Chart, Headline, Report};
use crate::seaweed::SeaweedFs;
use crate::server::Bitsd;
use crate::wire::{Conn, Post, Response};

const FRAGMENT: usize = 1 << 20;

/// One measured case.
struct Figures {
    nodes: usize,
    uploads: usize,
    mib: f64,
    secs: f64,
}

impl Figures {
    fn mib_s(&self) -> f64 {
        self.mib / self.secs
    }
    fn uploads_s(&self) -> f64 {
        self.uploads as f64 / self.secs
    }
}

pub fn farm(
    file_mib: u64,
    concurrency: usize,
    rounds: usize,
    runs: usize,
    nodes: usize,
) -> Result<Report> {
    let (file_mib, concurrency, rounds, runs, nodes) = (
        file_mib.max(1),
        concurrency.max(1),
        rounds.max(1),
        runs.max(1),
        nodes.max(2),
    );
    let base = Path::new("target").join("bench-data");
    std::fs::create_dir_all(&base)?;
    let started = Instant::now();
    eprintln!("starting SeaweedFS (loopback only)...");
    // The starter panics on failure; the panic unwinds through main, dropping (killing)
    // everything started so far.
    let weed = SeaweedFs::start("bench-farm");
    eprintln!(
        "SeaweedFS ready at {} after {:.1} s",
        weed.endpoint,
        started.elapsed().as_secs_f64()
    );
    let body: Vec<u8> = (0..FRAGMENT)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect();
    // Totals over all runs: [1 node, farm].
    let mut totals = [1, nodes].map(|n| Figures {
        nodes: n,
        uploads: 0,
        mib: 0.0,
        secs: 0.0,
    });
    for run in 0..runs {
        // Alternate the order so neither case always meets the fuller store.
        let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
        let mut mib_s = [0.0; 2];
        for case in order {
            let n = totals[case].nodes;
            let tag = format!("r{run}-{n}n");
            let f = run_case(&weed, &base, &tag, n, file_mib, concurrency, rounds, &body)
                .with_context(|| format!("run {}, {n}-node case", run + 1))?;
            eprintln!(
                "run {}, {n} node(s): {} uploads, {:.0} MiB in {:.1} s: {:.1} MiB/s, {:.2} uploads/s",
                run + 1,
                f.uploads,
                f.mib,
                f.secs,
                f.mib_s(),
                f.uploads_s()
            );
            mib_s[case] = f.mib_s();
            let t = &mut totals[case];
            t.uploads += f.uploads;
            t.mib += f.mib;
            t.secs += f.secs;
        }
        eprintln!(
            "run {}: ratio {nodes} nodes / 1 node = {:.2}",
            run + 1,
            mib_s[1] / mib_s[0]
        );
    }
    drop(weed);
    let one = totals[0].mib_s();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut out = String::new();
    writeln!(
        out,
        "| case | uploads | MiB | seconds | MiB/s | uploads/s | ratio vs 1 node |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|")?;
    for f in &totals {
        writeln!(
            out,
            "| {} bitsd node{} | {} | {:.0} | {:.1} | {:.1} | {:.2} | {:.2} |",
            f.nodes,
            if f.nodes == 1 { "" } else { "s" },
            f.uploads,
            f.mib,
            f.secs,
            f.mib_s(),
            f.uploads_s(),
            f.mib_s() / one
        )?;
    }
    writeln!(
        out,
        "({runs} run(s), order alternating; per case and run {concurrency} concurrent uploads x \
         {rounds} round(s) of {file_mib} MiB files in 1 MiB fragments; one SeaweedFS, fresh key \
         prefix per case, requests round-robin over the nodes; figures are totals over the runs; \
         wall time {:.0} s)",
        started.elapsed().as_secs_f64()
    )?;
    writeln!(
        out,
        "Note: the bitsd node(s), SeaweedFS and the {concurrency} client threads all share this \
         machine's {cores} core(s), so extra nodes add no CPU: a {nodes}-node/1-node ratio near \
         1.0 is expected here; scaling shows only when nodes (and the store) have their own \
         machines."
    )?;
    let farm = totals[1].mib_s();
    Ok(Report::table(out)
        .with_chart(Chart {
            name: "bench-farm".to_string(),
            title: format!("Farm on SeaweedFS: 1 node vs {nodes} nodes"),
            unit: "MiB/s".to_string(),
            bars: vec![
                ("1 bitsd node".to_string(), one),
                (format!("{nodes} bitsd nodes, round robin"), farm),
            ],
            line: None,
        })
        .with_headline(Headline {
            figure: format!("Farm: {concurrency} concurrent uploads on SeaweedFS"),
            value: format!("{nodes} nodes: {farm:.1} MiB/s"),
            baseline: format!("1 node: {one:.1} MiB/s"),
            ratio: farm / one,
            target: "none (same 2 cores for all nodes)".to_string(),
            met: None,
        }))
}

#[allow(clippy::too_many_arguments)]
fn run_case(
    weed: &SeaweedFs,
    base: &Path,
    tag: &str,
    nodes: usize,
    file_mib: u64,
    concurrency: usize,
    rounds: usize,
    body: &[u8],
) -> Result<Figures> {
    let config = format!(
        "session_lock_timeout = \"10s\"\n\
         [storage]\nbackend = \"s3\"\nendpoint = \"{endpoint}\"\nbucket = \"{bucket}\"\n\
         prefix = \"bench-{tag}/spool\"\naccess_key = \"any\"\nsecret_key = \"any\"\n\
         allow_http = true\n\
         [[vdir]]\nprefix = \"/upload/\"\nroot = \"bench-{tag}/uploads\"\n\
         download_enabled = false\nmax_fragment_size = {max}\n",
        endpoint = weed.endpoint,
        bucket = weed.bucket,
        max = 2 * FRAGMENT
    );
    // Dropped (killed) on every return path, after the servers that live in them.
    let mut dirs = Vec::new();
    let mut servers = Vec::new();
    for _ in 0..nodes {
        let dir = tempfile::tempdir_in(base)?;
        servers.push(Bitsd::start(dir.path(), &config)?);
        dirs.push(dir);
    }
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    // Warm-up (not measured): connection pools, SeaweedFS volume growth.
    let warm = concurrency.min(8);
    load(&addrs, &format!("warm-{tag}"), file_mib, warm, 1, body).context("warm-up")?;
    let secs = load(&addrs, tag, file_mib, concurrency, rounds, body)?;
    drop(servers);
    drop(dirs);
    let uploads = concurrency * rounds;
    Ok(Figures {
        nodes,
        uploads,
        mib: (uploads as u64 * file_mib) as f64,
        secs,
    })
}

/// `concurrency` threads, each uploading `rounds` files one after the other; the seconds from
/// the common start to the Close-Session Ack of the last upload.
fn load(
    addrs: &[SocketAddr],
    tag: &str,
    file_mib: u64,
    concurrency: usize,
    rounds: usize,
    body: &[u8],
) -> Result<f64> {
    let barrier = Barrier::new(concurrency + 1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..concurrency)
            .map(|w| {
                let barrier = &barrier;
                scope.spawn(move || -> Result<()> {
                    // Connect before the start signal, but always reach the barrier.
                    let client = Client::connect(addrs, w);
                    barrier.wait();
                    let mut client = client?;
                    for r in 0..rounds {
                        let path = format!("/upload/{tag}-w{w}-r{r}.bin");
                        crate::wire::upload(&mut client, &path, file_mib << 20, body)
                            .with_context(|| format!("upload {path}"))?;
                    }
                    Ok(())
                })
            })
            .collect();
        barrier.wait();
        let started = Instant::now();
        let mut first_error = None;
        for w in workers {
            let outcome = w
                .join()
                .unwrap_or_else(|_| Err(anyhow!("client thread panicked")));
            if let (Err(e), None) = (outcome, &first_error) {
                first_error = Some(e);
            }
        }
        let secs = started.elapsed().as_secs_f64();
        match first_error {
            Some(e) => Err(e),
            None => Ok(secs),
        }
    })
}

/// One BITS client: a keep-alive connection to every node, requests sent to the nodes in turn.
struct Client {
    addrs: Vec<SocketAddr>,
    conns: Vec<Option<Conn>>,
    next: usize,
}

impl Client {
    fn connect(addrs: &[SocketAddr], worker: usize) -> Result<Client> {
        let conns = addrs
            .iter()
            .map(|&a| Conn::open(a).map(Some))
            .collect::<Result<_>>()?;
        Ok(Client {
            addrs: addrs.to_vec(),
            conns,
            // Workers start on different nodes so the first requests are spread too.
            next: worker,
        })
    }
}

/// Each request goes to the next node, as a round-robin load balancer would send it.
impl Post for Client {
    fn post(&mut self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Response> {
        let n = self.next % self.addrs.len();
        self.next += 1;
        let addr = self.addrs[n];
        let conn = match &mut self.conns[n] {
            Some(c) => c,
            slot @ None => slot.insert(Conn::open(addr)?),
        };
        let resp = conn.post(path, headers, body)?;
        if resp.closes() {
            self.conns[n] = None;
        }
        Ok(resp)
    }
}
