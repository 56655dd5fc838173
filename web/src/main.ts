import { createApp } from "vue";

import App from "./App.vue";
import { browserDeviceLocks, DevicePool } from "./devices";
import { resolveWsUrl, Session } from "./session";
import "./style.css";

const session = new Session(
  resolveWsUrl(window.location, window.localStorage),
  window.location.origin,
  window.localStorage,
  new DevicePool(window.localStorage, window.sessionStorage, browserDeviceLocks()),
);
window.addEventListener("online", () => session.online());
// Fired for changes made by other tabs only.
window.addEventListener("storage", (event) => {
  if (event.storageArea === window.localStorage) {
    session.storageChanged(event.key, event.newValue);
  }
});
void session.start();

createApp(App, { session }).mount("#app");
