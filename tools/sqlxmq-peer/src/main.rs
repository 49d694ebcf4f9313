//! sqlxmq's drain of empty jobs, for bin/bench's peer row: enqueue N jobs
//! (not timed), start a runner, time until every job has completed.
//! Usage: DATABASE_URL=... SQLXMQ_MIGRATIONS=<sqlxmq's migrations dir> sqlxmq-peer [N]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sqlx::postgres::PgPoolOptions;
use sqlxmq::{job, CurrentJob, JobRegistry};

static DONE: AtomicUsize = AtomicUsize::new(0);

#[job]
async fn empty(mut job: CurrentJob) -> sqlx::Result<()> {
    job.complete().await?;
    DONE.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let url = std::env::var("DATABASE_URL").context("DATABASE_URL")?;
    let dir = std::env::var("SQLXMQ_MIGRATIONS").context("SQLXMQ_MIGRATIONS")?;
    let jobs: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(20_000);
    let pool = PgPoolOptions::new().max_connections(20).connect(&url).await?;

    let mut files: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".up.sql"))
        .collect();
    files.sort();
    for f in files {
        sqlx::raw_sql(&std::fs::read_to_string(&f)?).execute(&pool).await?;
    }

    let per_task = jobs.div_ceil(8);
    let mut tasks = Vec::new();
    for t in 0..8 {
        let pool = pool.clone();
        let n = per_task.min(jobs.saturating_sub(t * per_task));
        tasks.push(tokio::spawn(async move {
            for _ in 0..n {
                empty.builder().spawn(&pool).await?;
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }

    let start = Instant::now();
    let _handle = JobRegistry::new(&[empty]).runner(&pool).set_concurrency(10, 50).run().await?;
    while DONE.load(Ordering::Relaxed) < jobs {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = start.elapsed().as_secs_f64();
    println!("jobs={jobs} seconds={seconds:.3} jobs_per_s={:.1}", jobs as f64 / seconds);
    Ok(())
}
