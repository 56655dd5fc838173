import { createApp } from "vue";

import App from "./App.vue";
import { resolveWsUrl, Session } from "./session";
import "./style.css";

const session = new Session(
  resolveWsUrl(window.location, window.localStorage),
  window.location.origin,
  window.localStorage,
);
window.addEventListener("online", () => session.online());
session.start();

createApp(App, { session }).mount("#app");
