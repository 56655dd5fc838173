import { describe, expect, it } from "vitest";

import { coalesce } from "../../src/coalesce";

/** Returns a load whose runs end only when the test resolves or rejects them, in start order. */
function controlledLoad() {
  const runs: { resolve: (value: number) => void; reject: (error: Error) => void }[] = [];
  const load = () =>
    new Promise<number>((resolve, reject) => {
      runs.push({ resolve, reject });
    });
  return { load, runs };
}

/** Lets pending promise callbacks run. */
async function settle(): Promise<void> {
  for (let i = 0; i < 5; i += 1) {
    await Promise.resolve();
  }
}

describe("coalesce", () => {
  it("runs a burst as the running load and one more after it", async () => {
    const { load, runs } = controlledLoad();
    const reload = coalesce(load);

    const first = reload();
    const second = reload();
    const third = reload();
    await settle();
    expect(runs).toHaveLength(1);

    runs[0].resolve(1);
    await settle();
    expect(runs).toHaveLength(2);
    runs[1].resolve(2);

    expect(await first).toBe(1);
    expect(await second).toBe(2);
    expect(await third).toBe(2);
    expect(runs).toHaveLength(2);
  });

  it("runs the queued load after a failed one", async () => {
    const { load, runs } = controlledLoad();
    const reload = coalesce(load);

    const first = reload();
    const second = reload();
    runs[0].reject(new Error("offline"));
    await expect(first).rejects.toThrow("offline");
    await settle();
    runs[1].resolve(7);

    expect(await second).toBe(7);
  });

  it("starts afresh once every load has ended", async () => {
    const { load, runs } = controlledLoad();
    const reload = coalesce(load);

    const first = reload();
    runs[0].resolve(1);
    await first;
    await settle();
    const later = reload();
    runs[1].resolve(3);

    expect(await later).toBe(3);
    expect(runs).toHaveLength(2);
  });
});
