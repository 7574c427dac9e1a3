#!/usr/bin/env node
// An in-memory Elasticsearch 7.17 stand-in, for tests only: the REST calls real Kuzzle 2 makes at
// start-up, for its security bootstrap and for document CRUD, search, count, m* and bulk calls.
// Plain Node.js `http`, no dependency, no persistence: one process per test cluster.
//
// Usage: [ES_STUB_TRACE=1] node es-stub.js [--host 127.0.0.1] [--port 0]
//   prints `ES-STUB READY <port>` on stdout once listening (port 0: a free port is chosen);
//   ES_STUB_TRACE=1 logs every call to stderr.
// Extras (not Elasticsearch):
//   GET /_stub/stats  -> {"calls": {"GET /_cluster/health": 12, ...}, "total": N, "unknown": N}
//                        (calls per route, counted since start; /_stub/* calls are not counted)
// Unknown calls are logged to stderr (`ES-STUB UNKNOWN ...`) and answered 400 in ES's error shape.
// What is not modelled: shards, replicas, analyzers (text is matched as lower-cased words), scoring
// (every hit scores 1), aggregations, geo queries, scripts other than Kuzzle's own field setting.
"use strict";

const http = require("http");
const crypto = require("crypto");

const args = process.argv.slice(2);
function arg(name, dflt) {
  const i = args.indexOf(`--${name}`);
  return i === -1 ? dflt : args[i + 1];
}
const HOST = arg("host", "127.0.0.1");
const PORT = Number(arg("port", "0"));
const VERSION = "7.17.0";
// ES_STUB_TRACE=1: log every call (method, URL, start of the body) to stderr.
const TRACE = process.env.ES_STUB_TRACE === "1";

// ---------------------------------------------------------------------------------------------
// State

/** name -> { aliases: Set, mappings, settings, docs: Map<id, {source, version, seqNo}>, uuid, created } */
const indices = new Map();
/** scroll id -> { hits: [...], from } */
const scrolls = new Map();
let seqNo = 0;

const calls = {};
let total = 0;
let unknown = 0;

class EsError extends Error {
  constructor(status, type, reason, extra = {}) {
    super(reason);
    this.status = status;
    this.type = type;
    this.extra = extra;
  }
  body() {
    const cause = { type: this.type, reason: this.message, ...this.extra };
    return { error: { root_cause: [cause], ...cause }, status: this.status };
  }
}

const notFoundIndex = (name) =>
  new EsError(404, "index_not_found_exception", `no such index [${name}]`, {
    "resource.type": "index_or_alias",
    "resource.id": name,
    index: name,
  });

function uuid() {
  return crypto.randomBytes(16).toString("base64url").slice(0, 22);
}

function deepMerge(target, src) {
  for (const [k, v] of Object.entries(src || {})) {
    if (v && typeof v === "object" && !Array.isArray(v) && target[k] && typeof target[k] === "object") {
      deepMerge(target[k], v);
    } else if (v !== undefined) {
      target[k] = clone(v);
    }
  }
  return target;
}

function clone(v) {
  return v === undefined ? undefined : JSON.parse(JSON.stringify(v));
}

// ES settings come flat ("index.number_of_shards") or nested, strings or numbers; stored nested
// under `index` with string values, as ES returns them.
function normalizeSettings(settings) {
  const out = {};
  const put = (key, value) => {
    const k = key.startsWith("index.") ? key.slice(6) : key;
    if (value && typeof value === "object" && !Array.isArray(value)) {
      for (const [kk, vv] of Object.entries(value)) put(`${k}.${kk}`, vv);
    } else if (value !== undefined && value !== null) {
      setPath(out, k, typeof value === "string" ? value : JSON.stringify(value).replace(/^"|"$/g, ""));
    }
  };
  for (const [k, v] of Object.entries(settings || {})) {
    if (k === "index" && v && typeof v === "object") {
      for (const [kk, vv] of Object.entries(v)) put(kk, vv);
    } else {
      put(k, v);
    }
  }
  return out;
}

function getPath(obj, path) {
  let cur = obj;
  for (const part of path.split(".")) {
    if (cur === null || cur === undefined) return undefined;
    if (Array.isArray(cur)) {
      cur = cur.flatMap((c) => (c && typeof c === "object" ? [c[part]] : [])).filter((x) => x !== undefined);
      if (cur.length === 0) return undefined;
    } else {
      cur = cur[part];
    }
  }
  return cur;
}

function setPath(obj, path, value) {
  const parts = path.split(".");
  let cur = obj;
  for (const part of parts.slice(0, -1)) {
    if (!cur[part] || typeof cur[part] !== "object") cur[part] = {};
    cur = cur[part];
  }
  cur[parts[parts.length - 1]] = value;
}

function createIndex(name, body = {}) {
  if (indices.has(name) || aliasTargets(name).length > 0) {
    throw new EsError(400, "resource_already_exists_exception", `index [${name}/${uuid()}] already exists`, {
      index: name,
    });
  }
  if (name !== name.toLowerCase() || /[\\/*?"<>| ,#]/.test(name) || name.startsWith("_")) {
    throw new EsError(400, "invalid_index_name_exception", `Invalid index name [${name}]`, { index: name });
  }
  const settings = normalizeSettings(body.settings);
  settings.number_of_shards = settings.number_of_shards || "1";
  settings.number_of_replicas = settings.number_of_replicas || "1";
  const idx = {
    aliases: new Set(Object.keys(body.aliases || {})),
    mappings: clone(body.mappings || {}),
    settings,
    docs: new Map(),
    uuid: uuid(),
    created: Date.now(),
  };
  indices.set(name, idx);
  return idx;
}

function aliasTargets(alias) {
  const out = [];
  for (const [name, idx] of indices) if (idx.aliases.has(alias)) out.push(name);
  return out;
}

function wildcard(pattern) {
  const re = pattern.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".");
  return new RegExp(`^${re}$`);
}

/** Index names a request path target (names, aliases, wildcards, comma lists, _all) stands for. */
function resolve(target, { allowMissing = false } = {}) {
  if (target === undefined || target === "_all" || target === "*" || target === "") return [...indices.keys()];
  const out = new Set();
  for (const part of target.split(",")) {
    if (part.includes("*") || part.includes("?")) {
      const re = wildcard(part);
      for (const [name, idx] of indices) {
        if (re.test(name) || [...idx.aliases].some((a) => re.test(a))) out.add(name);
      }
    } else if (indices.has(part)) {
      out.add(part);
    } else {
      const t = aliasTargets(part);
      if (t.length === 0 && !allowMissing) throw notFoundIndex(part);
      t.forEach((n) => out.add(n));
    }
  }
  return [...out];
}

/** The one index a single-document call writes to (an alias must point at exactly one index). */
function writeIndex(target, autoCreate = true) {
  if (indices.has(target)) return target;
  const t = aliasTargets(target);
  if (t.length === 1) return t[0];
  if (t.length > 1) {
    throw new EsError(400, "illegal_argument_exception", `no write index is defined for alias [${target}]`);
  }
  if (!autoCreate) throw notFoundIndex(target);
  createIndex(target);
  return target;
}

function docHead(indexName, id, d) {
  return { _index: indexName, _type: "_doc", _id: id, _version: d.version, _seq_no: d.seqNo, _primary_term: 1 };
}

const SHARDS = { total: 1, successful: 1, failed: 0 };

// ---------------------------------------------------------------------------------------------
// Documents

function putDoc(target, id, source, { opType = "index" } = {}) {
  const name = writeIndex(target);
  const idx = indices.get(name);
  if (id === undefined || id === null || id === "") id = uuid();
  const prev = idx.docs.get(id);
  if (prev && opType === "create") {
    throw new EsError(
      409,
      "version_conflict_engine_exception",
      `[${id}]: version conflict, document already exists (current version [${prev.version}])`,
      { index_uuid: idx.uuid, shard: "0", index: name },
    );
  }
  const d = { source: clone(source), version: prev ? prev.version + 1 : 1, seqNo: seqNo++ };
  idx.docs.set(id, d);
  return { status: prev ? 200 : 201, body: { ...docHead(name, id, d), result: prev ? "updated" : "created", _shards: SHARDS } };
}

function getDoc(target, id) {
  const names = resolve(target);
  for (const name of names) {
    const d = indices.get(name).docs.get(id);
    if (d) return { status: 200, body: { ...docHead(name, id, d), found: true, _source: clone(d.source) } };
  }
  return { status: 404, body: { _index: names[0] || target, _type: "_doc", _id: id, found: false } };
}

function deleteDoc(target, id) {
  const name = writeIndex(target, false);
  const idx = indices.get(name);
  const prev = idx.docs.get(id);
  if (!prev) {
    return { status: 404, body: { _index: name, _type: "_doc", _id: id, _version: 1, result: "not_found", _shards: SHARDS, _seq_no: seqNo++, _primary_term: 1 } };
  }
  idx.docs.delete(id);
  const d = { version: prev.version + 1, seqNo: seqNo++ };
  return { status: 200, body: { ...docHead(name, id, d), result: "deleted", _shards: SHARDS } };
}

function applyScript(source, script) {
  // Kuzzle's bulkUpdateByQuery: `ctx._source.a.b = params['a.b'];` per changed field.
  for (const [key, value] of Object.entries((script && script.params) || {})) setPath(source, key, clone(value));
}

function updateDoc(target, id, body, { wantSource = false } = {}) {
  const name = writeIndex(target);
  const idx = indices.get(name);
  const prev = idx.docs.get(id);
  let source;
  let result;
  if (prev) {
    source = clone(prev.source);
    if (body.doc) deepMerge(source, body.doc);
    if (body.script) applyScript(source, body.script);
    result = "updated";
  } else if (body.upsert || body.doc_as_upsert) {
    source = clone(body.upsert || body.doc);
    result = "created";
  } else {
    throw new EsError(404, "document_missing_exception", `[_doc][${id}]: document missing`, {
      index_uuid: idx.uuid,
      shard: "0",
      index: name,
    });
  }
  const d = { source, version: prev ? prev.version + 1 : 1, seqNo: seqNo++ };
  idx.docs.set(id, d);
  const out = { ...docHead(name, id, d), result, _shards: SHARDS };
  if (wantSource) out.get = { _seq_no: d.seqNo, _primary_term: 1, found: true, _source: clone(source) };
  return { status: prev ? 200 : 201, body: out };
}

// ---------------------------------------------------------------------------------------------
// Queries (the subset Kuzzle's Koncorde-to-ES translator and its own internal calls produce)

function values(source, field) {
  if (field === "_id") return [source.__id];
  const v = getPath(source.doc, field);
  if (v === undefined || v === null) return [];
  return (Array.isArray(v) ? v.flat(Infinity) : [v]).filter((x) => x !== null && x !== undefined);
}

function termValue(spec) {
  return spec && typeof spec === "object" && !Array.isArray(spec) && "value" in spec ? spec.value : spec;
}

function eq(a, b) {
  if (typeof a === "string" && typeof b === "string") return a === b;
  if (typeof a === "boolean" || typeof b === "boolean") return String(a) === String(b);
  // eslint-disable-next-line eqeqeq
  return a == b;
}

function cmp(a, b) {
  if (typeof a === "number" && typeof b === "number") return a - b;
  const na = Number(a);
  const nb = Number(b);
  if (!Number.isNaN(na) && !Number.isNaN(nb) && a !== "" && b !== "") return na - nb;
  return String(a) < String(b) ? -1 : String(a) > String(b) ? 1 : 0;
}

function words(s) {
  return String(s).toLowerCase().split(/[^\p{L}\p{N}]+/u).filter(Boolean);
}

function fieldOf(clause) {
  const keys = Object.keys(clause).filter((k) => !["boost", "_name"].includes(k));
  if (keys.length !== 1) throw new EsError(400, "parsing_exception", `expected one field in ${JSON.stringify(clause)}`);
  return keys[0];
}

function matches(doc, query) {
  const entries = Object.entries(query || { match_all: {} });
  if (entries.length !== 1) throw new EsError(400, "parsing_exception", `[query] malformed: ${JSON.stringify(query)}`);
  const [type, q] = entries[0];
  switch (type) {
    case "match_all":
      return true;
    case "match_none":
      return false;
    case "ids":
      return (q.values || []).includes(doc.__id);
    case "term": {
      const f = fieldOf(q);
      const want = termValue(q[f]);
      return values(doc, f).some((v) => eq(v, want));
    }
    case "terms": {
      const f = fieldOf(q);
      const want = q[f];
      return values(doc, f).some((v) => want.some((w) => eq(v, w)));
    }
    case "match":
    case "match_phrase": {
      const f = fieldOf(q);
      const spec = q[f];
      const text = spec && typeof spec === "object" ? spec.query : spec;
      const have = values(doc, f);
      if (typeof text !== "string") return have.some((v) => eq(v, text));
      const ws = words(text);
      const docWords = new Set(have.flatMap(words));
      const and = type === "match_phrase" || (spec && spec.operator && spec.operator.toLowerCase() === "and");
      return ws.length > 0 && (and ? ws.every((w) => docWords.has(w)) : ws.some((w) => docWords.has(w)));
    }
    case "prefix": {
      const f = fieldOf(q);
      const p = String(termValue(q[f]));
      return values(doc, f).some((v) => String(v).startsWith(p));
    }
    case "wildcard": {
      const f = fieldOf(q);
      const re = wildcard(String(termValue(q[f])));
      return values(doc, f).some((v) => re.test(String(v)));
    }
    case "regexp": {
      const f = fieldOf(q);
      const re = new RegExp(`^(?:${termValue(q[f])})$`);
      return values(doc, f).some((v) => re.test(String(v)));
    }
    case "exists":
      return values(doc, q.field).length > 0;
    case "range": {
      const f = fieldOf(q);
      const r = q[f];
      return values(doc, f).some(
        (v) =>
          (r.gt === undefined || cmp(v, r.gt) > 0) &&
          (r.gte === undefined || cmp(v, r.gte) >= 0) &&
          (r.lt === undefined || cmp(v, r.lt) < 0) &&
          (r.lte === undefined || cmp(v, r.lte) <= 0),
      );
    }
    case "bool": {
      const list = (x) => (x === undefined ? [] : Array.isArray(x) ? x : [x]);
      const must = list(q.must).concat(list(q.filter));
      const should = list(q.should);
      if (!must.every((c) => matches(doc, c))) return false;
      if (list(q.must_not).some((c) => matches(doc, c))) return false;
      if (should.length === 0) return true;
      const min = q.minimum_should_match !== undefined ? Number(q.minimum_should_match) : must.length > 0 ? 0 : 1;
      return should.filter((c) => matches(doc, c)).length >= min;
    }
    case "constant_score":
      return matches(doc, q.filter);
    default:
      throw new EsError(400, "parsing_exception", `es-stub: unsupported query [${type}]`, { line: 1, col: 1 });
  }
}

function sortHits(hits, sort) {
  if (!sort) return hits;
  const keys = (Array.isArray(sort) ? sort : [sort]).map((s) => {
    if (typeof s === "string") return { field: s, desc: s === "_score" };
    const f = Object.keys(s)[0];
    const o = s[f];
    const order = typeof o === "string" ? o : (o && o.order) || (f === "_score" ? "desc" : "asc");
    return { field: f, desc: order.toLowerCase() === "desc" };
  });
  return hits.sort((a, b) => {
    for (const { field, desc } of keys) {
      if (field === "_score") continue;
      const va = field === "_id" ? a._id : getPath(a._source, field);
      const vb = field === "_id" ? b._id : getPath(b._source, field);
      if (va === vb) continue;
      if (va === undefined) return 1;
      if (vb === undefined) return -1;
      const c = cmp(va, vb);
      if (c !== 0) return desc ? -c : c;
    }
    return 0;
  });
}

function select(target, query) {
  const out = [];
  for (const name of resolve(target)) {
    for (const [id, d] of indices.get(name).docs) {
      if (matches({ __id: id, doc: d.source }, query)) {
        out.push({ _index: name, _type: "_doc", _id: id, _score: 1, _version: d.version, _source: clone(d.source) });
      }
    }
  }
  return out;
}

function search(target, body, params) {
  body = body || {};
  const hits = sortHits(select(target, body.query), body.sort);
  const from = Number(params.from ?? body.from ?? 0);
  const size = Number(params.size ?? body.size ?? 10);
  const page = hits.slice(from, from + size);
  const out = {
    took: 1,
    timed_out: false,
    _shards: { total: 1, successful: 1, skipped: 0, failed: 0 },
    hits: { total: { value: hits.length, relation: "eq" }, max_score: page.length ? 1 : null, hits: page },
  };
  if (params.scroll) {
    const id = Buffer.from(uuid()).toString("base64");
    scrolls.set(id, { hits, from: from + size, size });
    out._scroll_id = id;
  }
  return out;
}

function scroll(body, params) {
  const id = (body && body.scroll_id) || params.scroll_id;
  const s = scrolls.get(id);
  if (!s) {
    throw new EsError(404, "search_context_missing_exception", "No search context found for id [0]");
  }
  const page = s.hits.slice(s.from, s.from + s.size);
  s.from += s.size;
  return {
    _scroll_id: id,
    took: 1,
    timed_out: false,
    _shards: { total: 1, successful: 1, skipped: 0, failed: 0 },
    hits: { total: { value: s.hits.length, relation: "eq" }, max_score: page.length ? 1 : null, hits: page },
  };
}

function bulk(defaultIndex, lines, params) {
  const items = [];
  let errors = false;
  for (let i = 0; i < lines.length; i++) {
    const action = Object.keys(lines[i])[0];
    const meta = lines[i][action] || {};
    const target = meta._index || defaultIndex;
    const id = meta._id;
    const payload = action === "delete" ? undefined : lines[++i];
    let r;
    try {
      switch (action) {
        case "index":
          r = putDoc(target, id, payload);
          break;
        case "create":
          r = putDoc(target, id, payload, { opType: "create" });
          break;
        case "update":
          r = updateDoc(target, id, payload, { wantSource: Boolean(meta._source || payload._source || params._source) });
          break;
        case "delete":
          r = deleteDoc(target, id);
          break;
        default:
          throw new EsError(400, "illegal_argument_exception", `Malformed action/metadata line [${i + 1}]`);
      }
      items.push({ [action]: { ...r.body, status: r.status } });
      if (r.status >= 400) errors = true;
    } catch (e) {
      if (!(e instanceof EsError)) throw e;
      errors = true;
      items.push({
        [action]: { _index: target, _type: "_doc", _id: id, status: e.status, error: { type: e.type, reason: e.message, ...e.extra } },
      });
    }
  }
  return { took: 1, errors, items };
}

function mget(defaultIndex, body, params) {
  const docs = (body.docs || (body.ids || []).map((_id) => ({ _id }))).map((spec) => {
    const target = spec._index || defaultIndex;
    let r;
    try {
      r = getDoc(target, spec._id);
    } catch (e) {
      if (!(e instanceof EsError)) throw e;
      return { _index: target, _type: "_doc", _id: spec._id, error: e.body().error };
    }
    const noSource = spec._source === false || params._source === "false";
    if (noSource && r.body.found) delete r.body._source;
    return r.body;
  });
  return { docs };
}

// ---------------------------------------------------------------------------------------------
// Cluster and index metadata

function info() {
  return {
    name: "es-stub",
    cluster_name: "es-stub",
    cluster_uuid: "es-stub-cluster-uuid",
    version: {
      number: VERSION,
      build_flavor: "default",
      build_type: "docker",
      build_hash: "0000000",
      build_date: "2022-01-28T08:36:04.875279988Z",
      build_snapshot: false,
      lucene_version: "8.11.1",
      minimum_wire_compatibility_version: "6.8.0",
      minimum_index_compatibility_version: "6.0.0-beta1",
    },
    tagline: "You Know, for Search",
  };
}

function docCount() {
  let n = 0;
  for (const idx of indices.values()) n += idx.docs.size;
  return n;
}

function health() {
  const n = indices.size;
  return {
    cluster_name: "es-stub",
    status: "green",
    timed_out: false,
    number_of_nodes: 1,
    number_of_data_nodes: 1,
    active_primary_shards: n,
    active_shards: n,
    relocating_shards: 0,
    initializing_shards: 0,
    unassigned_shards: 0,
    delayed_unassigned_shards: 0,
    number_of_pending_tasks: 0,
    number_of_in_flight_fetch: 0,
    task_max_waiting_in_queue_millis: 0,
    active_shards_percent_as_number: 100.0,
  };
}

function storeBytes(idx) {
  let n = 0;
  for (const d of idx.docs.values()) n += JSON.stringify(d.source).length;
  return n;
}

function clusterStats() {
  let bytes = 0;
  for (const idx of indices.values()) bytes += storeBytes(idx);
  return {
    _nodes: { total: 1, successful: 1, failed: 0 },
    cluster_name: "es-stub",
    cluster_uuid: "es-stub-cluster-uuid",
    timestamp: Date.now(),
    status: "green",
    indices: {
      count: indices.size,
      shards: { total: indices.size, primaries: indices.size },
      docs: { count: docCount(), deleted: 0 },
      store: { size: `${bytes}b`, size_in_bytes: bytes, reserved: "0b", reserved_in_bytes: 0 },
    },
    nodes: {
      count: { total: 1, data: 1, master: 1, ingest: 1, coordinating_only: 0 },
      versions: [VERSION],
    },
  };
}

function catAliases(names) {
  const out = [];
  const wanted = names ? names.split(",") : null;
  for (const [index, idx] of indices) {
    for (const alias of idx.aliases) {
      if (!wanted || wanted.some((w) => wildcard(w).test(alias))) {
        out.push({ alias, index, filter: "-", "routing.index": "-", "routing.search": "-", is_write_index: "-" });
      }
    }
  }
  return out;
}

function catIndices(target) {
  return resolve(target, { allowMissing: true }).map((index) => {
    const idx = indices.get(index);
    const size = `${storeBytes(idx)}b`;
    return {
      health: "green",
      status: "open",
      index,
      uuid: idx.uuid,
      pri: idx.settings.number_of_shards,
      rep: idx.settings.number_of_replicas,
      "docs.count": String(idx.docs.size),
      "docs.deleted": "0",
      "store.size": size,
      "pri.store.size": size,
    };
  });
}

function indexSettings(name) {
  const idx = indices.get(name);
  return {
    index: {
      ...clone(idx.settings),
      creation_date: String(idx.created),
      provided_name: name,
      uuid: idx.uuid,
      version: { created: "7170099" },
    },
  };
}

function updateAliases(body) {
  for (const action of body.actions || []) {
    const [type, spec] = Object.entries(action)[0];
    const names = spec.indices || [spec.index];
    const aliases = spec.aliases || [spec.alias];
    for (const index of names.flatMap((n) => resolve(n))) {
      for (const alias of aliases) {
        if (type === "add") indices.get(index).aliases.add(alias);
        else if (type === "remove") indices.get(index).aliases.delete(alias);
        else if (type === "remove_index") indices.delete(index);
        else throw new EsError(400, "illegal_argument_exception", `es-stub: unsupported alias action [${type}]`);
      }
    }
  }
  return { acknowledged: true };
}

// ---------------------------------------------------------------------------------------------
// Routing

const ok = (body, status = 200) => ({ status, body });
const ack = () => ok({ acknowledged: true });

// [method(s), path template, handler(params: {p: path params, q: query, body})]
// Templates: literal segments, `{name}` matches one segment (not starting with `_` unless the
// name ends with `*`).
const ROUTES = [
  ["GET HEAD", "/", () => ok(info())],
  ["GET", "/_cluster/health", () => ok(health())],
  ["GET", "/_cluster/health/{index}", () => ok(health())],
  ["GET", "/_cluster/stats", () => ok(clusterStats())],
  ["GET", "/_cat/aliases", () => ok(catAliases())],
  ["GET", "/_cat/aliases/{name}", ({ p }) => ok(catAliases(p.name))],
  ["GET", "/_cat/indices", () => ok(catIndices())],
  ["GET", "/_cat/indices/{index}", ({ p }) => ok(catIndices(p.index))],
  ["GET", "/_cat/nodes", () => ok([{ ip: "127.0.0.1", "heap.percent": "10", "ram.percent": "50", cpu: "1", load_1m: "0.10", "node.role": "cdfhilmrstw", master: "*", name: "es-stub" }])],
  ["GET", "/_nodes", () => ok({ _nodes: { total: 1, successful: 1, failed: 0 }, cluster_name: "es-stub", nodes: {} })],
  ["GET", "/_alias", () => ok(getAliases())],
  ["GET", "/_alias/{name}", ({ p }) => ok(getAliases(undefined, p.name))],
  ["HEAD", "/_alias/{name}", ({ p }) => ok({}, aliasTargets(p.name).length > 0 ? 200 : 404)],
  ["POST", "/_aliases", ({ body }) => ok(updateAliases(body))],
  ["GET POST", "/_search", ({ q, body }) => ok(search(undefined, body, q))],
  ["GET POST", "/_search/scroll", ({ q, body }) => ok(scroll(body, q))],
  ["GET POST", "/_search/scroll/{id}", ({ p, q, body }) => ok(scroll({ ...body, scroll_id: p.id }, q))],
  ["DELETE", "/_search/scroll", ({ q, body }) => ok(clearScroll(body, q))],
  ["DELETE", "/_search/scroll/{id}", ({ p }) => ok(clearScroll({ scroll_id: p.id }, {}))],
  ["GET POST", "/_mget", ({ q, body }) => ok(mget(undefined, body, q))],
  ["POST PUT", "/_bulk", ({ q, body }) => ok(bulk(undefined, body, q))],
  ["GET POST", "/_refresh", () => ok({ _shards: SHARDS })],
  ["GET", "/_stats", () => ok(indexStats())],
  ["GET", "/_stats/{metric}", () => ok(indexStats())],

  ["HEAD", "/{index}", ({ p }) => ok({}, resolve(p.index, { allowMissing: true }).length > 0 ? 200 : 404)],
  ["GET", "/{index}", ({ p }) => ok(Object.fromEntries(resolve(p.index).map((n) => [n, { aliases: aliasObj(n), mappings: indices.get(n).mappings, settings: indexSettings(n) }])))],
  ["PUT", "/{index}", ({ p, body }) => (createIndex(p.index, body), ok({ acknowledged: true, shards_acknowledged: true, index: p.index }))],
  ["DELETE", "/{index}", ({ p }) => (resolve(p.index).forEach((n) => indices.delete(n)), ack())],
  ["GET", "/{index}/_settings", ({ p }) => ok(Object.fromEntries(resolve(p.index).map((n) => [n, { settings: indexSettings(n) }])))],
  ["PUT", "/{index}/_settings", ({ p, body }) => (resolve(p.index).forEach((n) => deepMerge(indices.get(n).settings, normalizeSettings(body))), ack())],
  ["GET", "/{index}/_mapping", ({ p }) => ok(Object.fromEntries(resolve(p.index).map((n) => [n, { mappings: clone(indices.get(n).mappings) }])))],
  ["PUT POST", "/{index}/_mapping", ({ p, body }) => (resolve(p.index).forEach((n) => deepMerge(indices.get(n).mappings, body)), ack())],
  ["GET", "/{index}/_alias", ({ p }) => ok(getAliases(p.index))],
  ["GET", "/{index}/_alias/{name}", ({ p }) => ok(getAliases(p.index, p.name))],
  ["HEAD", "/{index}/_alias/{name}", ({ p }) => ok({}, resolve(p.index, { allowMissing: true }).some((n) => indices.get(n).aliases.has(p.name)) ? 200 : 404)],
  ["PUT POST", "/{index}/_alias/{name}", ({ p }) => (resolve(p.index).forEach((n) => indices.get(n).aliases.add(p.name)), ack())],
  ["DELETE", "/{index}/_alias/{name}", ({ p }) => (resolve(p.index).forEach((n) => p.name.split(",").forEach((a) => indices.get(n).aliases.delete(a))), ack())],
  ["DELETE", "/{index}/_aliases/{name}", ({ p }) => (resolve(p.index).forEach((n) => p.name.split(",").forEach((a) => indices.get(n).aliases.delete(a))), ack())],
  ["POST", "/{index}/_close", ({ p }) => (resolve(p.index), ack())],
  ["POST", "/{index}/_open", ({ p }) => (resolve(p.index), ack())],
  ["GET POST", "/{index}/_refresh", ({ p }) => (resolve(p.index), ok({ _shards: SHARDS }))],
  ["GET", "/{index}/_stats", ({ p }) => ok(indexStats(p.index))],
  ["GET", "/{index}/_stats/{metric}", ({ p }) => ok(indexStats(p.index))],
  ["GET POST", "/{index}/_search", ({ p, q, body }) => ok(search(p.index, body, q))],
  ["GET POST", "/{index}/_count", ({ p, body }) => ok({ count: select(p.index, (body || {}).query).length, _shards: SHARDS })],
  ["GET POST", "/{index}/_mget", ({ p, q, body }) => ok(mget(p.index, body, q))],
  ["POST PUT", "/{index}/_bulk", ({ p, q, body }) => ok(bulk(p.index, body, q))],
  ["POST", "/{index}/_delete_by_query", ({ p, body }) => ok(deleteByQuery(p.index, body))],
  ["POST", "/{index}/_update_by_query", ({ p, body }) => ok(updateByQuery(p.index, body))],
  ["POST", "/{index}/_doc", ({ p, body }) => putDoc(p.index, undefined, body)],
  ["GET", "/{index}/_doc/{id}", ({ p }) => getDoc(p.index, p.id)],
  ["HEAD", "/{index}/_doc/{id}", ({ p }) => ({ status: getDoc(p.index, p.id).status, body: {} })],
  ["PUT POST", "/{index}/_doc/{id}", ({ p, q, body }) => putDoc(p.index, p.id, body, { opType: q.op_type === "create" ? "create" : "index" })],
  ["PUT POST", "/{index}/_create/{id}", ({ p, body }) => putDoc(p.index, p.id, body, { opType: "create" })],
  ["DELETE", "/{index}/_doc/{id}", ({ p }) => deleteDoc(p.index, p.id)],
  ["POST", "/{index}/_update/{id}", ({ p, q, body }) => updateDoc(p.index, p.id, body, { wantSource: q._source === "true" || body._source === true })],
  ["GET", "/{index}/_source/{id}", ({ p }) => {
    const r = getDoc(p.index, p.id);
    return r.status === 200 ? ok(r.body._source) : r;
  }],
];


function aliasObj(name) {
  return Object.fromEntries([...indices.get(name).aliases].map((a) => [a, {}]));
}

function getAliases(target, names) {
  const re = names ? names.split(",").map(wildcard) : null;
  const out = {};
  for (const n of resolve(target, { allowMissing: true })) {
    const aliases = [...indices.get(n).aliases].filter((a) => !re || re.some((r) => r.test(a)));
    if (!re || aliases.length > 0) out[n] = { aliases: Object.fromEntries(aliases.map((a) => [a, {}])) };
  }
  if (target && !names && Object.keys(out).length === 0) throw notFoundIndex(target);
  return out;
}

function clearScroll(body, q) {
  const ids = [].concat((body && body.scroll_id) || q.scroll_id || []);
  let n = 0;
  for (const id of ids.flatMap((x) => String(x).split(","))) if (scrolls.delete(id)) n++;
  return { succeeded: true, num_freed: n };
}

function indexStats(target) {
  const out = {};
  for (const n of resolve(target, { allowMissing: true })) {
    const idx = indices.get(n);
    const bytes = storeBytes(idx);
    const s = { docs: { count: idx.docs.size, deleted: 0 }, store: { size_in_bytes: bytes, reserved_in_bytes: 0 } };
    out[n] = { uuid: idx.uuid, primaries: s, total: s };
  }
  return { _shards: SHARDS, _all: {}, indices: out };
}

function deleteByQuery(target, body) {
  const hits = select(target, (body || {}).query);
  for (const h of hits) indices.get(h._index).docs.delete(h._id);
  return byQueryResult({ total: hits.length, deleted: hits.length });
}

function updateByQuery(target, body) {
  const hits = select(target, (body || {}).query);
  for (const h of hits) {
    const d = indices.get(h._index).docs.get(h._id);
    if (body && body.script) applyScript(d.source, body.script);
    d.version++;
    d.seqNo = seqNo++;
  }
  return byQueryResult({ total: hits.length, updated: hits.length });
}

function byQueryResult(extra) {
  return {
    took: 1,
    timed_out: false,
    total: 0,
    updated: 0,
    deleted: 0,
    batches: 1,
    version_conflicts: 0,
    noops: 0,
    retries: { bulk: 0, search: 0 },
    throttled_millis: 0,
    requests_per_second: -1.0,
    throttled_until_millis: 0,
    failures: [],
    ...extra,
  };
}

const compiled = ROUTES.flatMap(([methods, template, handler]) => {
  const segs = template.split("/").filter(Boolean);
  return methods.split(" ").map((method) => ({ method, template, segs, handler }));
});

function route(method, segs) {
  // Literal segments win over parameters: try routes with more literals first.
  let best = null;
  let bestScore = -1;
  for (const r of compiled) {
    if (r.method !== method || r.segs.length !== segs.length) continue;
    const p = {};
    let score = 0;
    let okRoute = true;
    for (let i = 0; i < segs.length && okRoute; i++) {
      const t = r.segs[i];
      if (t.startsWith("{")) {
        // An index name never starts with `_`: `/_cat` is not an index.
        if (t === "{index}" && segs[i].startsWith("_")) okRoute = false;
        else p[t.slice(1, -1)] = segs[i];
      } else if (t === segs[i]) {
        score++;
      } else {
        okRoute = false;
      }
    }
    if (okRoute && score > bestScore) {
      best = { r, p };
      bestScore = score;
    }
  }
  return best;
}

function parseBody(raw, ndjson) {
  const text = raw.toString("utf8");
  if (ndjson) {
    return text
      .split("\n")
      .filter((l) => l.trim() !== "")
      .map((l) => JSON.parse(l));
  }
  return text.trim() === "" ? undefined : JSON.parse(text);
}

function send(res, method, status, body) {
  const data = method === "HEAD" ? "" : JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json; charset=UTF-8",
    "x-elastic-product": "Elasticsearch",
    "content-length": Buffer.byteLength(data),
  });
  res.end(data);
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const url = new URL(req.url, "http://es-stub");
    const segs = url.pathname.split("/").filter(Boolean).map(decodeURIComponent);
    const q = Object.fromEntries(url.searchParams);
    const method = req.method;
    if (url.pathname === "/_stub/stats" && method === "GET") {
      send(res, method, 200, { calls, total, unknown });
      return;
    }
    total++;
    if (TRACE) process.stderr.write(`ES-STUB ${method} ${req.url} ${Buffer.concat(chunks).toString("utf8").slice(0, 500)}\n`);
    const found = route(method, segs);
    const key = found ? `${method} ${found.r.template}` : `UNKNOWN ${method} ${url.pathname}`;
    calls[key] = (calls[key] || 0) + 1;
    if (!found) {
      unknown++;
      process.stderr.write(`ES-STUB UNKNOWN ${method} ${req.url} ${Buffer.concat(chunks).toString("utf8").slice(0, 300)}\n`);
      send(res, method, 400, new EsError(400, "illegal_argument_exception", `es-stub: no handler for [${method} ${url.pathname}]`).body());
      return;
    }
    let result;
    try {
      const body = parseBody(Buffer.concat(chunks), segs[segs.length - 1] === "_bulk");
      result = found.r.handler({ p: found.p, q, body: body || {} });
    } catch (e) {
      if (e instanceof EsError) {
        result = { status: e.status, body: e.body() };
      } else if (e instanceof SyntaxError) {
        result = { status: 400, body: new EsError(400, "parse_exception", `request body is not JSON: ${e.message}`).body() };
      } else {
        process.stderr.write(`ES-STUB ERROR ${method} ${req.url}: ${e.stack}\n`);
        result = { status: 500, body: new EsError(500, "exception", String(e.message)).body() };
      }
    }
    send(res, method, result.status, result.body);
  });
});

server.listen(PORT, HOST, () => {
  process.stdout.write(`ES-STUB READY ${server.address().port}\n`);
});

for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => process.exit(0));
