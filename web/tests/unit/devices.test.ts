import { describe, expect, it } from "vitest";

import { DevicePool, LOGOUT_KEY, OWN_DEVICE_WAIT_MS } from "../../src/devices";
import type { DeviceLocks } from "../../src/devices";
import { MemoryStorage } from "./support/memory-storage";

/** Locks shared by the tabs of one browser; records how long each acquire was willing to wait. */
class FakeLocks {
  readonly holders = new Map<string, string>();
  readonly waits: { tab: string; deviceId: string; waitMs: number }[] = [];

  forTab(tab: string): DeviceLocks {
    return {
      acquire: (deviceId, waitMs) => {
        this.waits.push({ tab, deviceId, waitMs });
        const holder = this.holders.get(deviceId);
        if (holder !== undefined && holder !== tab) {
          return Promise.resolve(false);
        }
        this.holders.set(deviceId, tab);
        return Promise.resolve(true);
      },
      release: (deviceId) => {
        if (this.holders.get(deviceId) === tab) {
          this.holders.delete(deviceId);
        }
      },
    };
  }

  /** Drops every lock of a tab, as the browser does when the tab closes or reloads. */
  closeTab(tab: string): void {
    for (const [deviceId, holder] of [...this.holders]) {
      if (holder === tab) {
        this.holders.delete(deviceId);
      }
    }
  }
}

function credentials(deviceId: string, userId = "1", username = "alice") {
  return { userId, deviceId, token: `token-${deviceId}`, username };
}

describe("device pool", () => {
  it("gives a second tab no device while the first uses the only one", async () => {
    const shared = new MemoryStorage();
    const locks = new FakeLocks();
    const first = new DevicePool(shared, new MemoryStorage(), locks.forTab("a"));
    await first.save(credentials("10"));
    const second = new DevicePool(shared, new MemoryStorage(), locks.forTab("b"));
    expect(await second.claim()).toBeNull();
    expect(second.tabDeviceId()).toBeNull();
  });

  it("gives each tab its own device once each logged in", async () => {
    const shared = new MemoryStorage();
    const locks = new FakeLocks();
    const first = new DevicePool(shared, new MemoryStorage(), locks.forTab("a"));
    const second = new DevicePool(shared, new MemoryStorage(), locks.forTab("b"));
    await first.save(credentials("10"));
    await second.save(credentials("11"));
    expect(first.tabDeviceId()).toBe("10");
    expect(second.tabDeviceId()).toBe("11");
    expect(first.devices().map((device) => device.token).sort()).toEqual(["token-10", "token-11"]);

    // A third tab after the first closed takes the freed device, without a password.
    locks.closeTab("a");
    const third = new DevicePool(shared, new MemoryStorage(), locks.forTab("c"));
    expect((await third.claim())?.deviceId).toBe("10");
  });

  it("keeps a tab's device across a reload", async () => {
    const shared = new MemoryStorage();
    const tab = new MemoryStorage();
    const locks = new FakeLocks();
    await new DevicePool(shared, tab, locks.forTab("a")).save(credentials("10"));
    await new DevicePool(shared, new MemoryStorage(), locks.forTab("b")).save(credentials("11"));
    locks.closeTab("a");
    locks.closeTab("b");
    // Device 11 is the most recently used, but the reloaded tab asks for its own first.
    const reloaded = new DevicePool(shared, tab, locks.forTab("a2"));
    expect((await reloaded.claim())?.deviceId).toBe("10");
    expect(locks.waits.at(-1)).toEqual({ tab: "a2", deviceId: "10", waitMs: OWN_DEVICE_WAIT_MS });
  });

  it("moves a duplicated tab to another device", async () => {
    const shared = new MemoryStorage();
    const tab = new MemoryStorage();
    const locks = new FakeLocks();
    await new DevicePool(shared, new MemoryStorage(), locks.forTab("b")).save(credentials("11"));
    locks.closeTab("b");
    await new DevicePool(shared, tab, locks.forTab("a")).save(credentials("10"));
    // A duplicated tab starts with a copy of the original's sessionStorage.
    const copy = new MemoryStorage();
    copy.setItem("im.device", tab.getItem("im.device") as string);
    const duplicate = new DevicePool(shared, copy, locks.forTab("d"));
    expect((await duplicate.claim())?.deviceId).toBe("11");
    expect(duplicate.tabDeviceId()).toBe("11");
  });

  it("claims only devices of the user logging in", async () => {
    const shared = new MemoryStorage();
    const locks = new FakeLocks();
    await new DevicePool(shared, new MemoryStorage(), locks.forTab("a")).save(credentials("10"));
    await new DevicePool(shared, new MemoryStorage(), locks.forTab("b")).save(
      credentials("20", "2", "bob"),
    );
    locks.closeTab("a");
    locks.closeTab("b");
    const tab = new DevicePool(shared, new MemoryStorage(), locks.forTab("c"));
    expect((await tab.claim("alice"))?.deviceId).toBe("10");
    expect(await tab.claim("carol")).toBeNull();
  });

  it("replaces a device's token and forgets devices", async () => {
    const shared = new MemoryStorage();
    const locks = new FakeLocks();
    const pool = new DevicePool(shared, new MemoryStorage(), locks.forTab("a"));
    await pool.save(credentials("10"));
    await pool.save({ ...credentials("10"), token: "new" });
    expect(pool.devices().map((device) => device.token)).toEqual(["new"]);
    pool.forget("10");
    expect(pool.devices()).toEqual([]);
    expect(pool.tabDeviceId()).toBeNull();
    expect(locks.holders.size).toBe(0);
  });

  it("skips damaged entries", () => {
    const shared = new MemoryStorage();
    shared.setItem("im.devices", JSON.stringify([{ userId: "1" }, credentials("10"), 5]));
    const pool = new DevicePool(shared, new MemoryStorage(), new FakeLocks().forTab("a"));
    expect(pool.devices().map((device) => device.deviceId)).toEqual(["10"]);
    shared.setItem("im.devices", "{not json");
    expect(pool.devices()).toEqual([]);
  });

  it("announces a logout to other tabs", () => {
    const shared = new MemoryStorage();
    const pool = new DevicePool(shared, new MemoryStorage(), new FakeLocks().forTab("a"));
    pool.announceLogout("1");
    expect(DevicePool.loggedOutUser(shared.getItem(LOGOUT_KEY))).toBe("1");
    expect(DevicePool.loggedOutUser("garbage")).toBeNull();
    expect(DevicePool.loggedOutUser(null)).toBeNull();
  });
});
