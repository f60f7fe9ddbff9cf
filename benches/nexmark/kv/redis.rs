//! The key-value sink into Redis beside a redis-rs loop doing the same
//! upserts: each batch one pipeline of `SET auction:{auction} {json}`.
//! Both write to a Redis server the bench starts (no persistence), emptied
//! before each run.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flumen::sinks::KvSinkConfig;
use flumen::sinks::kv::RedisConfig;
use flumen_core::testing::free_port;

use super::{RecordBatch, best_rate, rows_as_json, run_into};

struct RedisServer {
    port: u16,
    process: Child,
}

impl RedisServer {
    fn start() -> RedisServer {
        let binary =
            std::env::var("FLUMEN_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let port = free_port();
        let process = Command::new(&binary)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {binary} (apt-get install redis-server): {e}")
            });
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        RedisServer { port, process }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

pub fn run(runtime: &tokio::runtime::Runtime, batches: &[RecordBatch], taken: usize) {
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).expect("Redis URL");
    let flush = || {
        runtime.block_on(async {
            let mut connection = client
                .get_multiplexed_async_connection()
                .await
                .expect("connection");
            redis::cmd("FLUSHDB")
                .query_async::<()>(&mut connection)
                .await
                .expect("FLUSHDB");
        })
    };
    let baseline = best_rate(taken, || {
        flush();
        runtime.block_on(async {
            let mut connection = client
                .get_multiplexed_async_connection()
                .await
                .expect("connection");
            for batch in batches {
                let (json, auctions) = rows_as_json(batch);
                let mut pipeline = redis::pipe();
                for (row, value) in json
                    .split(|b| *b == b'\n')
                    .take(batch.num_rows())
                    .enumerate()
                {
                    pipeline
                        .set(format!("auction:{}", auctions[row]), value)
                        .ignore();
                }
                pipeline
                    .query_async::<()>(&mut connection)
                    .await
                    .expect("pipeline");
            }
        });
    });
    let engine = best_rate(taken, || {
        flush();
        let mut sink = KvSinkConfig::new("", "auction:{auction}");
        sink.path = None;
        sink.redis = Some(RedisConfig {
            url: Some(server.url()),
            cluster: None,
            hash: false,
            retry_for: Duration::from_secs(10),
            checkpoint_key: None,
        });
        run_into(runtime, batches, sink);
    });
    println!(
        "kv sink into Redis ({taken} bids upserted by auction, a batch at a time)\n  redis-rs pipelined SET loop:      {:>10.0} rows/s\n  bids → kv sink (Redis):           {:>10.0} rows/s   ratio {:.2}x\n",
        baseline,
        engine,
        engine / baseline
    );
}
