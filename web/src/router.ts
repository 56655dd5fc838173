// Client routes on the History API: /, /chat/user/ID, /chat/group/ID, /friends, /groups. The
// logic tier returns index.html for each of them, so a reload lands on the same view.

import { reactive } from "vue";

import { isValidId } from "./store";

export type Route =
  | { name: "home" }
  | { name: "chat"; conversation: string }
  | { name: "friends" }
  | { name: "groups" }
  | { name: "notFound"; path: string };

/**
 * Returns the route of a path. A chat path whose id is not a positive integer within uint64,
 * and any other unknown path except "/", is the not-found route.
 */
export function parseRoute(path: string): Route {
  const chat = /^\/chat\/(user|group)\/([^/]+)\/?$/.exec(path);
  if (chat) {
    if (!isValidId(chat[2])) {
      return { name: "notFound", path };
    }
    return { name: "chat", conversation: `${chat[1]}:${chat[2]}` };
  }
  if (path === "/friends") {
    return { name: "friends" };
  }
  if (path === "/groups") {
    return { name: "groups" };
  }
  if (path === "/" || path === "" || path === "/index.html") {
    return { name: "home" };
  }
  return { name: "notFound", path };
}

export function routePath(route: Route): string {
  switch (route.name) {
    case "chat":
      return `/chat/${route.conversation.replace(":", "/")}`;
    case "friends":
      return "/friends";
    case "groups":
      return "/groups";
    case "notFound":
      return route.path;
    default:
      return "/";
  }
}

/**
 * Returns where to go when the signed-in user was removed from group `groupId`: the group list
 * when `route` is that group's conversation, else null (stay).
 */
export function routeAfterLeavingGroup(route: Route, groupId: string): Route | null {
  if (route.name === "chat" && route.conversation === `group:${groupId}`) {
    return { name: "groups" };
  }
  return null;
}

export const router = reactive({ route: currentRoute() });

function currentRoute(): Route {
  return typeof window === "undefined" ? { name: "home" } : parseRoute(window.location.pathname);
}

export function navigate(route: Route): void {
  const path = routePath(route);
  if (window.location.pathname !== path) {
    window.history.pushState(null, "", path);
  }
  router.route = route;
}

if (typeof window !== "undefined") {
  window.addEventListener("popstate", () => {
    router.route = parseRoute(window.location.pathname);
  });
}
