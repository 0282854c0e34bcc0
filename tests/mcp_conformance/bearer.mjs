// Loaded before the MCP conformance suite (`node --import`): every request it sends carries
// `Authorization: Bearer $MCP_BEARER`, which `orchestra mcp --http` requires. The suite has
// no option for a header; its scenarios send through fetch() and through its own undici.
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";

const token = process.env.MCP_BEARER;
if (!token) throw new Error("set MCP_BEARER to the server's bearer token");

const fetched = globalThis.fetch;
globalThis.fetch = (input, init = {}) => {
  const headers = new Headers(init.headers || (input instanceof Request ? input.headers : undefined));
  if (!headers.has("authorization")) headers.set("authorization", `Bearer ${token}`);
  return fetched(input, { ...init, headers });
};

const undici = createRequire(pathToFileURL(process.env.MCP_CONFORMANCE_DIR + "/package.json"))("undici");
undici.setGlobalDispatcher(new undici.Agent().compose((dispatch) => (opts, handler) => {
  const headers = { ...(opts.headers || {}) };
  if (!Object.keys(headers).some((k) => k.toLowerCase() === "authorization")) headers.authorization = `Bearer ${token}`;
  return dispatch({ ...opts, headers }, handler);
}));
