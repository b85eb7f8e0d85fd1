//! `cargo bench -p waymark-bench [-- --quick] [noop|pending|backfill|contended|seed|growth] [sqlite|postgres]`
//!
//! Runs waymark's benchmarks and prints each figure beside its baseline
//! (and peer) measured in the same run, then a table of them all.

use std::process::ExitCode;

use waymark_bench::backfill::memory_child;
use waymark_bench::{
    BoxError, Figure, Scale, Selection, backfill, contended, growth, noop, pending, report,
    seed_shape,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = if args.first().map(String::as_str) == Some("--child") {
        runtime.block_on(child(&args[1..]))
    } else {
        runtime.block_on(benchmarks(&args))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("benchmark failed: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn benchmarks(args: &[String]) -> Result<(), BoxError> {
    let quick = args.iter().any(|a| a == "--quick")
        || std::env::var("WAYMARK_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    // cargo passes `--bench`; other options are not ours.
    let words: Vec<String> = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .cloned()
        .collect();
    let selection = Selection::new(&words)?;
    let scale = if quick { Scale::quick() } else { Scale::full() };
    println!(
        "waymark benchmarks ({} mode) on {}",
        if quick { "quick" } else { "full" },
        machine()
    );
    if selection.needs_postgres() {
        // Starts the throwaway cluster now, outside any measurement.
        let _ = waymark_tests::pg::server_url();
    }
    let mut figures: Vec<Figure> = Vec::new();
    if selection.runs("noop", "sqlite") {
        noop::sqlite(&scale, &mut figures).await?;
    }
    if selection.runs("noop", "postgres") {
        noop::postgres(&scale, &mut figures).await?;
    }
    if selection.runs("pending", "sqlite") {
        pending::sqlite(&scale, &mut figures).await?;
    }
    if selection.runs("pending", "postgres") {
        pending::postgres(&scale, &mut figures).await?;
    }
    if selection.runs("backfill", "sqlite") {
        backfill::sqlite(&scale, &mut figures).await?;
    }
    if selection.runs("backfill", "postgres") {
        backfill::postgres(&scale, &mut figures).await?;
    }
    if selection.runs("contended", "sqlite") {
        contended::sqlite(&scale, &mut figures).await?;
    }
    if selection.runs("contended", "postgres") {
        contended::postgres(&scale, &mut figures).await?;
    }
    if selection.runs("seed", "sqlite") {
        seed_shape::sqlite(&scale, &mut figures).await?;
    }
    if selection.runs("seed", "postgres") {
        seed_shape::postgres(&scale, &mut figures).await?;
    }
    if selection.runs("growth", "sqlite") {
        growth::sqlite(&scale, &mut figures).await?;
    }
    if selection.runs("growth", "postgres") {
        growth::postgres(&scale, &mut figures).await?;
    }
    println!("\n{}", report::table(&figures));
    let missed = figures.iter().filter(|f| f.met() == Some(false)).count();
    println!("{} figures, {missed} below target", figures.len());
    Ok(())
}

/// `--child memory sqlite <variant> <streams> <points> <batch>` (or
/// `--child seed …`, see `seed_shape::memory_child`): one backfill in this
/// fresh process, reporting its peak memory.
async fn child(args: &[String]) -> Result<(), BoxError> {
    match args {
        [what, backend, variant, streams, points, batch]
            if what == "memory" && backend == "sqlite" =>
        {
            let used =
                memory_child(variant, streams.parse()?, points.parse()?, batch.parse()?).await?;
            println!("{}", used.to_line());
            Ok(())
        }
        [what, rest @ ..] if what == "seed" => {
            println!("{}", seed_shape::memory_child(rest).await?.to_line());
            Ok(())
        }
        _ => Err(format!("unknown child task {args:?}").into()),
    }
}

/// The CPU model and core count, from /proc/cpuinfo.
fn machine() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU", str::trim)
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{model}, {cores} cores")
}
