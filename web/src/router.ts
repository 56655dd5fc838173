// Client routes on the History API: /, /chat/user/ID, /chat/group/ID, /friends, /groups. The
// logic tier returns index.html for each of them, so a reload lands on the same view.

import { reactive } from "vue";

export type Route =
  | { name: "home" }
  | { name: "chat"; conversation: string }
  | { name: "friends" }
  | { name: "groups" };

export function parseRoute(path: string): Route {
  const chat = /^\/chat\/(user|group)\/(\d+)\/?$/.exec(path);
  if (chat) {
    return { name: "chat", conversation: `${chat[1]}:${chat[2]}` };
  }
  if (path === "/friends") {
    return { name: "friends" };
  }
  if (path === "/groups") {
    return { name: "groups" };
  }
  return { name: "home" };
}

export function routePath(route: Route): string {
  switch (route.name) {
    case "chat":
      return `/chat/${route.conversation.replace(":", "/")}`;
    case "friends":
      return "/friends";
    case "groups":
      return "/groups";
    default:
      return "/";
  }
}

export const router = reactive({ route: parseRoute(window.location.pathname) as Route });

export function navigate(route: Route): void {
  const path = routePath(route);
  if (window.location.pathname !== path) {
    window.history.pushState(null, "", path);
  }
  router.route = route;
}

window.addEventListener("popstate", () => {
  router.route = parseRoute(window.location.pathname);
});
