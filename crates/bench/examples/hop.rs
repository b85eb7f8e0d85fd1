//! The cost of one `spawn_blocking` round trip and one `tokio::spawn` round trip on this machine.
use std::time::Instant;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for _ in 0..3 {
            let mut v = Vec::new();
            for _ in 0..2000 {
                let t = Instant::now();
                tokio::task::spawn_blocking(|| ()).await.unwrap();
                v.push(t.elapsed());
            }
            v.sort();
            let mut s = Vec::new();
            for _ in 0..2000 {
                let t = Instant::now();
                tokio::spawn(async {}).await.unwrap();
                s.push(t.elapsed());
            }
            s.sort();
            println!(
                "spawn_blocking median {:?} p90 {:?}; spawn median {:?} p90 {:?}",
                v[1000], v[1800], s[1000], s[1800]
            );
        }
    });
}
