/**
 * Wraps `load` so that calls made while it runs share one more run after it, which starts
 * once the running one has ended, whether it succeeded or failed. A burst of calls thus costs
 * at most two runs, and the last of them starts after the last call.
 */
export function coalesce<T>(load: () => Promise<T>): () => Promise<T> {
  let running: Promise<T> | null = null;
  let queued: Promise<T> | null = null;

  const start = (): Promise<T> => {
    const run = load();
    running = run;
    const clear = (): void => {
      if (running === run) {
        running = null;
      }
    };
    run.then(clear, clear);
    return run;
  };

  return () => {
    if (queued) {
      return queued;
    }
    if (running) {
      queued = running
        .catch(() => undefined)
        .then(() => {
          queued = null;
          return start();
        });
      return queued;
    }
    return start();
  };
}
