//! Crash torture: `kill -9` of recsys's writing commands at random moments,
//! each kill followed by the checks a user relies on.
//!
//! One project lives through the whole run, so every command also has to
//! cope with what the previous kill left behind. After each kill:
//! - `recsys audit` is clean (no torn or missing object, every pointer's
//!   object present, the lineage index agrees with the store);
//! - every object on the remote hashes to its name, and every directory
//!   manifest there has all its files (a push commits files first);
//! - every stream message whose offset the ingest consumer group committed
//!   is in exactly one dataset (and none is in two);
//! - every request id a client received an answer under resolves with
//!   `recsys lineage` (serve).
//!
//! `RECSYS_TORTURE_KILLS` sets the number of kills (CI runs a small count;
//! `scripts/torture.sh` a large one), `RECSYS_TORTURE_SEED` the seed (a
//! failure prints it, so the run can be repeated).

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use recsys::store::Digest;
use recsys::store::manifest::Manifest;
use recsys::workspace::{Settings, Workspace};

use crate::common::Env;

const TOPIC: &str = "movielog1";
const PARTITIONS: i32 = 2;
const GROUP: &str = "torture";

/// xorshift64*: the run is a function of its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Cmd {
    Add,
    Push,
    Checkout,
    Gc,
    Ingest,
    Serve,
}

const CMDS: [Cmd; 6] = [
    Cmd::Add,
    Cmd::Push,
    Cmd::Checkout,
    Cmd::Gc,
    Cmd::Ingest,
    Cmd::Serve,
];

/// Ids of earlier serve rounds checked again after every kill.
const RECHECK_IDS: u64 = 20;

struct Torture {
    env: Env,
    rng: Rng,
    seed: u64,
    remote: std::path::PathBuf,
    _cluster: MockCluster<'static, DefaultProducerContext>,
    brokers: String,
    producer: BaseProducer,
    /// Per partition: the user id of the message at each offset.
    produced: BTreeMap<i32, Vec<u64>>,
    next_user: u64,
    /// How long each command took when it ran to the end (kill delays are
    /// drawn below this).
    took: HashMap<Cmd, Duration>,
    kills: BTreeMap<Cmd, usize>,
    completed: usize,
    generation: u64,
    /// What serves: dataset and model names, the config's digest.
    served: (String, String, String),
    /// Every request id a client received, over all serve rounds.
    ids: Vec<String>,
}

impl Torture {
    fn new(seed: u64) -> Torture {
        let env = Env::new();
        let remote = env.add_origin();
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster
            .create_topic(TOPIC, PARTITIONS, 1)
            .expect("create topic");
        let brokers = cluster.bootstrap_servers();
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .expect("producer");
        let mut t = Torture {
            env,
            rng: Rng(seed | 1),
            seed,
            remote,
            _cluster: cluster,
            brokers,
            producer,
            produced: BTreeMap::new(),
            next_user: 1,
            took: HashMap::new(),
            kills: BTreeMap::new(),
            completed: 0,
            generation: 0,
            served: Default::default(),
            ids: Vec::new(),
        };
        t.write_big();
        t.write_small(400);
        t.env.ok(&["add", "data/big.bin", "--kind", "dataset"]);
        t.env.ok(&["add", "data/small", "--kind", "dataset"]);
        // Not under data/dataset_*: check_ingest counts those.
        let (ds, model) = crate::provenance::add_served_model(&t.env, "data/served");
        let config = blake3::hash(&t.env.read("config.json"))
            .to_hex()
            .to_string();
        t.served = (ds, model, config);
        t.env.commit("data");
        t
    }

    /// Start `recsys serve`, put it under load from two clients, `kill -9`
    /// it after a random delay, and check that every id a client received
    /// resolves (logged ones fully, the rest to config, model and dataset).
    fn serve_round(&mut self) -> Result<(), String> {
        let mut child = self
            .env
            .cmd(&["serve", "--port", "0", "--poll-ms", "200"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut out = std::io::BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).map_err(|e| e.to_string())?;
        let port: u16 = line
            .trim_end()
            .trim_end_matches('/')
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| {
                let _ = child.kill();
                format!("serve did not start: {line:?}")
            })?;
        let load = crate::provenance::Load::start(port, 2);
        std::thread::sleep(Duration::from_millis(20 + self.rng.below(180)));
        child.kill().map_err(|e| e.to_string())?;
        let _ = child.wait();
        *self.kills.entry(Cmd::Serve).or_default() += 1;
        let ids = load.finish();
        let (ds, model, config) = &self.served;
        crate::provenance::check_ids_resolve(&self.env, &ids, model, ds, config)?;
        self.ids.extend(ids);
        Ok(())
    }

    /// Some ids of earlier serve rounds still resolve.
    fn recheck_ids(&mut self) -> Result<(), String> {
        if self.ids.is_empty() {
            return Ok(());
        }
        let some: Vec<String> = (0..RECHECK_IDS)
            .map(|_| self.ids[self.rng.below(self.ids.len() as u64) as usize].clone())
            .collect();
        let (ds, model, config) = &self.served;
        crate::provenance::check_ids_resolve(&self.env, &some, model, ds, config).map(|_| ())
    }

    /// A 6 MiB file whose bytes change with every generation.
    fn write_big(&mut self) {
        self.generation += 1;
        let mut x = self.generation.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut v = vec![0u8; 6 << 20];
        for c in v.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
        }
        self.env.write("data/big.bin", v);
    }

    /// Rewrite `n` of the small directory's 400 files.
    fn write_small(&mut self, n: u64) {
        self.generation += 1;
        for _ in 0..n {
            let i = self.rng.below(400);
            self.env.write(
                &format!("data/small/part-{i:03}.csv"),
                format!("id,value\n{i},{}\n", self.generation),
            );
        }
    }

    fn produce(&mut self, n: u64) {
        for _ in 0..n {
            let user = self.next_user;
            self.next_user += 1;
            let p = (user % PARTITIONS as u64) as i32;
            let line = format!("2024-03-01T10:00:00,{user},GET /data/m/heat+1995/1.mpg");
            self.producer
                .send(
                    BaseRecord::<str, str>::to(TOPIC)
                        .partition(p)
                        .payload(&line),
                )
                .map_err(|(e, _)| e)
                .expect("send");
            self.produced.entry(p).or_default().push(user);
        }
        self.producer.flush(Duration::from_secs(30)).expect("flush");
    }

    /// Prepare the work the command will do, and start it.
    fn start(&mut self, cmd: Cmd) -> Child {
        let args: Vec<String> = match cmd {
            Cmd::Add => {
                if self.rng.below(2) == 0 {
                    self.write_big();
                    vec!["add".into(), "data/big.bin".into()]
                } else {
                    let n = 1 + self.rng.below(200);
                    self.write_small(n);
                    vec!["add".into(), "data/small".into()]
                }
            }
            Cmd::Push => vec!["push".into()],
            Cmd::Checkout => {
                // Lose some work-tree files; checkout brings them back.
                for _ in 0..self.rng.below(50) {
                    let i = self.rng.below(400);
                    let _ =
                        std::fs::remove_file(self.env.path(&format!("data/small/part-{i:03}.csv")));
                }
                if self.rng.below(3) == 0 {
                    let _ = std::fs::remove_file(self.env.path("data/big.bin"));
                }
                vec!["checkout".into(), "--force".into()]
            }
            // No grace period: gc must then be right about every object.
            Cmd::Gc => vec!["gc".into(), "--grace".into(), "0s".into()],
            Cmd::Serve => vec!["serve".into(), "--port".into(), "0".into()],
            Cmd::Ingest => {
                let n = 200 + self.rng.below(800);
                self.produce(n);
                vec![
                    "ingest".into(),
                    "--brokers".into(),
                    self.brokers.clone(),
                    "--topic".into(),
                    TOPIC.into(),
                    "--group".into(),
                    GROUP.into(),
                    "--max-messages".into(),
                    n.to_string(),
                    "--allow-drift".into(),
                ]
            }
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.env
            .cmd(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn recsys")
    }

    /// Run `cmd` and kill it after a random delay. True when the kill
    /// landed (the command had not finished yet).
    fn round(&mut self, cmd: Cmd) -> Result<bool, String> {
        if cmd == Cmd::Serve {
            return self.serve_round().map(|()| true);
        }
        let budget = self
            .took
            .get(&cmd)
            .copied()
            .unwrap_or(Duration::from_millis(300));
        let delay = Duration::from_micros(self.rng.below(budget.as_micros() as u64 + 1));
        let t0 = Instant::now();
        let mut child = self.start(cmd);
        let deadline = t0 + delay;
        loop {
            if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
                self.took.insert(cmd, t0.elapsed());
                self.completed += 1;
                if !st.success() {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut e, &mut err);
                    }
                    // A command that starts after a kill may refuse with a
                    // clear error (e.g. a stale lock it explains); an
                    // ingest with no new messages is not an error here.
                    return Err(format!("{cmd:?} failed on its own ({st}): {err}"));
                }
                return Ok(false);
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        child.kill().map_err(|e| e.to_string())?;
        let _ = child.wait();
        *self.kills.entry(cmd).or_default() += 1;
        Ok(true)
    }

    fn check(&mut self) -> Result<(), String> {
        self.recheck_ids()?;
        let o = self.env.run(&["audit", "--json"]);
        if !o.status.success() {
            return Err(format!(
                "audit: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        self.check_remote()?;
        self.check_ingest()
    }

    /// Objects on the remote are whole, and manifests come after their files.
    fn check_remote(&self) -> Result<(), String> {
        let Ok(rd) = std::fs::read_dir(&self.remote) else {
            return Ok(()); // nothing pushed yet
        };
        for d in rd.flatten() {
            let name = d.file_name().to_string_lossy().to_string();
            if name.len() != 2 || !d.path().is_dir() {
                continue;
            }
            for f in std::fs::read_dir(d.path())
                .map_err(|e| e.to_string())?
                .flatten()
            {
                let hex = format!("{name}{}", f.file_name().to_string_lossy());
                let bytes = std::fs::read(f.path()).map_err(|e| e.to_string())?;
                let got = blake3::hash(&bytes).to_hex().to_string();
                if got != hex {
                    return Err(format!("remote object {hex} is torn: hashes to {got}"));
                }
                if bytes.starts_with(b"recsys-manifest ") {
                    let digest: Digest = hex.parse().map_err(|e| format!("{e}"))?;
                    let m = Manifest::parse(&digest, &bytes).map_err(|e| e.to_string())?;
                    for e in m.entries {
                        let h = e.digest.hex();
                        if !self.remote.join(&h[..2]).join(&h[2..]).exists() {
                            return Err(format!(
                                "remote manifest {hex} names {} ({h}), which is not on the remote",
                                e.path
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Every message at an offset the group committed is in exactly one
    /// dataset; no message is in two.
    fn check_ingest(&self) -> Result<(), String> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", GROUP)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| e.to_string())?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition(TOPIC, p);
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .map_err(|e| format!("committed offsets: {e}"))?;
        let ws =
            Workspace::discover(&self.env.root, Settings::default()).map_err(|e| e.to_string())?;
        let mut seen: HashMap<u64, usize> = HashMap::new();
        for a in ws
            .lineage
            .artifacts(Some("dataset"))
            .map_err(|e| e.to_string())?
        {
            // Only the ingested ones: data/big.bin and data/small are not
            // in the dataset format.
            if !a
                .path
                .as_deref()
                .is_some_and(|p| p.starts_with("data/dataset_"))
            {
                continue;
            }
            let ds = ws
                .load_dataset(&a)
                .map_err(|e| format!("{}: {e}", a.name))?;
            for e in ds.events {
                *seen.entry(e.user).or_default() += 1;
            }
        }
        if let Some((u, n)) = seen.iter().find(|(_, n)| **n > 1) {
            return Err(format!("message of user {u} is in {n} datasets"));
        }
        for p in 0..PARTITIONS {
            let upto = match committed.find_partition(TOPIC, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o.max(0) as usize,
                _ => 0,
            };
            let users = self.produced.get(&p).map(Vec::as_slice).unwrap_or(&[]);
            for (off, u) in users.iter().enumerate().take(upto) {
                if !seen.contains_key(u) {
                    return Err(format!(
                        "partition {p} offset {off} (user {u}) was committed but is in no dataset"
                    ));
                }
            }
        }
        Ok(())
    }
}

fn kills_wanted() -> usize {
    std::env::var("RECSYS_TORTURE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40)
}

fn seed() -> u64 {
    std::env::var("RECSYS_TORTURE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7)
        })
}

#[test]
fn random_kills_of_every_writing_command_lose_nothing() {
    let seed = seed();
    let want = kills_wanted();
    let mut t = Torture::new(seed);
    // One full run of each: the kill delays are drawn below these times.
    for cmd in CMDS {
        if cmd == Cmd::Serve {
            continue; // it never ends by itself; its rounds draw their own delays
        }
        t.took.insert(cmd, Duration::from_secs(2));
        let child = t.start(cmd);
        let t0 = Instant::now();
        let o = child.wait_with_output().expect("wait");
        assert!(
            o.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        t.took.insert(cmd, t0.elapsed());
    }
    let mut rounds = 0;
    let started = Instant::now();
    while t.kills.values().sum::<usize>() < want {
        rounds += 1;
        let cmd = CMDS[t.rng.below(CMDS.len() as u64) as usize];
        let res = t.round(cmd).and_then(|_| t.check());
        if let Err(e) = res {
            panic!(
                "crash torture failed after {} kill(s), round {rounds} ({cmd:?}), seed {seed} \
                 (rerun with RECSYS_TORTURE_SEED={seed}): {e}",
                t.kills.values().sum::<usize>(),
                seed = t.seed
            );
        }
        assert!(
            rounds < want * 20,
            "only {} kills landed in {rounds} rounds",
            t.kills.values().sum::<usize>()
        );
    }
    eprintln!(
        "crash torture: {} kills survived ({}), {} runs completed, 0 failures, seed {}, {:.0?}",
        t.kills.values().sum::<usize>(),
        t.kills
            .iter()
            .map(|(c, n)| format!("{c:?} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        t.completed,
        t.seed,
        started.elapsed()
    );
}
