//! The one helper thread: every blocking file operation (chunk hashing and writes, fsync,
//! rename, reading a file back to hash it) runs here, one job at a time, so the event loop
//! never waits on the disk. Jobs queue in a bounded channel; callers await the answer.

use std::sync::mpsc;

type Job = Box<dyn FnOnce() + Send>;

/// Handle to the disk thread. Cloning shares the same thread.
#[derive(Clone)]
pub struct Disk {
    jobs: mpsc::SyncSender<Job>,
}

impl Disk {
    /// Starts the thread. `queue` bounds the jobs waiting; a caller past it waits its turn.
    pub fn start(queue: usize) -> Disk {
        let (jobs, rx) = mpsc::sync_channel::<Job>(queue);
        std::thread::Builder::new()
            .name("lanvan-disk".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("cannot start the disk thread");
        Disk { jobs }
    }

    /// Runs `f` on the disk thread and waits, without blocking the loop, for its result.
    pub async fn run<T, F>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = smol::channel::bounded(1);
        self.submit(move || {
            let _ = tx.try_send(f());
        })
        .await;
        rx.recv().await.expect("the disk thread dropped a job")
    }

    /// Queues `job` without waiting for it to run. A job that wants to answer early and
    /// go on working (a chunk write, then hashing) brings its own channel.
    pub async fn submit(&self, job: impl FnOnce() + Send + 'static) {
        let mut job: Option<Job> = Some(Box::new(job));
        // The queue is bounded: when it is full, yield to the loop and try again rather
        // than block the loop thread on `send`.
        loop {
            match self.jobs.try_send(job.take().expect("job present")) {
                Ok(()) => return,
                Err(mpsc::TrySendError::Full(j)) => {
                    job = Some(j);
                    smol::Timer::after(std::time::Duration::from_millis(1)).await;
                }
                Err(mpsc::TrySendError::Disconnected(_)) => panic!("the disk thread has stopped"),
            }
        }
    }
}
