// One device per browser tab. The engine keeps one live connection per device and kicks the
// older one (close code 4003) when a device signs in twice, so two tabs sharing a device would
// disconnect each other. Each device keeps its own token from LOGIN.
//
// - localStorage "im.devices" is the browser's pool: every device with its token, shared by all
//   tabs, so a tab opened later reuses a free device without the password.
// - sessionStorage "im.device" is the device id of this tab. It survives a reload of the tab,
//   so a reload signs in as the same device.
// - A Web Lock named "im.device.ID", held while a tab uses device ID, shows the other tabs that
//   the device is taken. The browser releases it when the tab closes or reloads.

import type { Credentials } from "./api";

const POOL_KEY = "im.devices";
/** localStorage key written at logout, so the user's other tabs log out as well. */
export const LOGOUT_KEY = "im.logout";
const TAB_DEVICE_KEY = "im.device";
const LOCK_PREFIX = "im.device.";
/**
 * How long a tab waits for the lock of its own device. A reload can start before the browser
 * has released the lock of the page it replaces. A duplicated tab copies sessionStorage, so it
 * names a device that the original tab keeps, and it takes another device after this wait.
 */
export const OWN_DEVICE_WAIT_MS = 3_000;

/** A device in the pool: its credentials and when a tab last took it, in ms since the epoch. */
export interface PooledDevice extends Credentials {
  usedAtMs: number;
}

/** The part of the Web Locks API that the pool uses, replaceable in tests. */
export interface DeviceLocks {
  /** Takes the lock of a device and holds it until {@link release}; false when not free in time. */
  acquire(deviceId: string, waitMs: number): Promise<boolean>;
  release(deviceId: string): void;
}

/** Device locks on `navigator.locks`, held until released or until the tab goes away. */
export class WebDeviceLocks implements DeviceLocks {
  private readonly held = new Map<string, () => void>();

  constructor(private readonly locks: LockManager) {}

  acquire(deviceId: string, waitMs: number): Promise<boolean> {
    if (this.held.has(deviceId)) {
      return Promise.resolve(true);
    }
    return new Promise<boolean>((resolve) => {
      const options: LockOptions =
        waitMs > 0 ? { signal: AbortSignal.timeout(waitMs) } : { ifAvailable: true };
      this.locks
        .request(LOCK_PREFIX + deviceId, options, (lock) => {
          if (!lock) {
            resolve(false);
            return undefined;
          }
          resolve(true);
          // The lock is held until this promise settles.
          return new Promise<void>((release) => this.held.set(deviceId, release));
        })
        .catch(() => resolve(false));
    });
  }

  release(deviceId: string): void {
    this.held.get(deviceId)?.();
    this.held.delete(deviceId);
  }
}

/**
 * Locks for a page without the Web Locks API (pages served over plain HTTP from a host other
 * than localhost are not a secure context). Every device counts as free.
 *
 * NOTE: without locks, a new tab takes the most recently used device even when another tab
 * uses it, and the engine then disconnects the older tab with 4003, as with one device per
 * browser.
 */
export class NoDeviceLocks implements DeviceLocks {
  acquire(): Promise<boolean> {
    return Promise.resolve(true);
  }

  release(): void {}
}

function isDevice(value: unknown): value is PooledDevice {
  const device = value as PooledDevice;
  return (
    typeof device === "object" &&
    device !== null &&
    typeof device.userId === "string" &&
    typeof device.deviceId === "string" &&
    typeof device.token === "string" &&
    typeof device.username === "string" &&
    device.userId !== "" &&
    device.deviceId !== "" &&
    device.token !== ""
  );
}

/** The browser's devices (localStorage) and the one this tab uses (sessionStorage). */
export class DevicePool {
  constructor(
    private readonly shared: Storage,
    private readonly tab: Storage,
    private readonly locks: DeviceLocks,
    private readonly now: () => number = Date.now,
  ) {}

  /** Returns every stored device, most recently used first; a damaged entry is skipped. */
  devices(): PooledDevice[] {
    let parsed: unknown;
    try {
      parsed = JSON.parse(this.shared.getItem(POOL_KEY) ?? "[]");
    } catch {
      return [];
    }
    if (!Array.isArray(parsed)) {
      return [];
    }
    return parsed
      .filter(isDevice)
      .map((device) => ({ ...device, usedAtMs: Number(device.usedAtMs) || 0 }))
      .sort((a, b) => b.usedAtMs - a.usedAtMs);
  }

  /** Returns the device id this tab uses, or null. */
  tabDeviceId(): string | null {
    return this.tab.getItem(TAB_DEVICE_KEY);
  }

  /** Returns true while the pool contains the device with this id. */
  has(deviceId: string): boolean {
    return this.devices().some((device) => device.deviceId === deviceId);
  }

  /**
   * Takes a device for this tab: its own device from before a reload when that is free within
   * {@link OWN_DEVICE_WAIT_MS}, else the most recently used free device, of `username` when
   * given. Returns null when every stored device is in use by another tab.
   */
  async claim(username?: string): Promise<PooledDevice | null> {
    const devices = this.devices().filter((device) => !username || device.username === username);
    const own = this.tabDeviceId();
    const ordered = [
      ...devices.filter((device) => device.deviceId === own),
      ...devices.filter((device) => device.deviceId !== own),
    ];
    for (const device of ordered) {
      const waitMs = device.deviceId === own ? OWN_DEVICE_WAIT_MS : 0;
      if (await this.locks.acquire(device.deviceId, waitMs)) {
        this.use(device);
        return device;
      }
    }
    return null;
  }

  /** Stores the credentials from LOGIN as this tab's device, replacing an older token. */
  async save(credentials: Credentials): Promise<void> {
    // A new device is free, and the same device keeps the lock this tab holds already.
    await this.locks.acquire(credentials.deviceId, 0);
    this.use({ ...credentials, usedAtMs: 0 });
  }

  /** Removes a device from the pool and from this tab, and releases its lock. */
  forget(deviceId: string): void {
    const devices = this.devices().filter((device) => device.deviceId !== deviceId);
    this.shared.setItem(POOL_KEY, JSON.stringify(devices));
    if (this.tabDeviceId() === deviceId) {
      this.tab.removeItem(TAB_DEVICE_KEY);
    }
    this.locks.release(deviceId);
  }

  /** Lets other tabs take this tab's device; the pool keeps it. */
  release(deviceId: string): void {
    if (this.tabDeviceId() === deviceId) {
      this.tab.removeItem(TAB_DEVICE_KEY);
    }
    this.locks.release(deviceId);
  }

  /** Tells the other tabs that `userId` logged out. */
  announceLogout(userId: string): void {
    this.shared.setItem(LOGOUT_KEY, JSON.stringify({ userId, atMs: this.now() }));
  }

  /** Returns the user id of a logout announced with {@link announceLogout}, or null. */
  static loggedOutUser(value: string | null): string | null {
    try {
      const parsed = JSON.parse(value ?? "null") as { userId?: unknown } | null;
      return typeof parsed?.userId === "string" ? parsed.userId : null;
    } catch {
      return null;
    }
  }

  private use(device: PooledDevice): void {
    const others = this.devices().filter((entry) => entry.deviceId !== device.deviceId);
    const used = { ...device, usedAtMs: this.now() };
    this.shared.setItem(POOL_KEY, JSON.stringify([used, ...others]));
    this.tab.setItem(TAB_DEVICE_KEY, device.deviceId);
  }
}

/** Returns device locks on the Web Locks API when the page has it, else {@link NoDeviceLocks}. */
export function browserDeviceLocks(): DeviceLocks {
  return typeof navigator !== "undefined" && navigator.locks
    ? new WebDeviceLocks(navigator.locks)
    : new NoDeviceLocks();
}
