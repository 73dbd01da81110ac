// The ragtune page: plain JavaScript against the service's own API (no build step, no CDN).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { history: [], turn: 0 };

function keys() {
  return { client: localStorage.getItem("ragtune.clientKey") || "", admin: localStorage.getItem("ragtune.adminKey") || "" };
}

async function api(path, { admin = false, ...options } = {}) {
  const key = admin ? keys().admin : keys().client;
  const headers = { ...(options.headers || {}) };
  if (key) headers.Authorization = `Bearer ${key}`;
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error.message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") node.textContent = value; else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

// -- models and collections ------------------------------------------------------------
async function loadChoices() {
  try {
    const models = (await (await api("/v1/models")).json()).data.filter((m) => m.kind !== "embedding");
    $("model").replaceChildren(...models.map((m) => element("option", { value: m.id, text: m.parent ? `${m.id} (adapter)` : m.id })));
    const collections = (await (await api("/v1/collections")).json()).data;
    const chosen = $("collection").value;
    $("collection").replaceChildren(...collections.map((c) => element("option", { value: c.name, text: `${c.name} (${c.sources} sources)` })));
    if (collections.some((c) => c.name === chosen)) $("collection").value = chosen;
    status("");
  } catch (error) {
    status(`Cannot reach the API: ${error.message}. Set the client key under "API keys".`, true);
  }
}

// -- asking: the chat endpoint, streamed; earlier turns make follow-ups ---------------------
function linkCitations(text, turn) {
  const fragment = document.createDocumentFragment();
  let last = 0;
  for (const match of text.matchAll(/\[(\d+)\]/g)) {
    fragment.append(text.slice(last, match.index));
    fragment.append(element("a", { class: "cite", href: `#cite-${turn}-${match[1]}`, text: match[0] }));
    last = match.index + match[0].length;
  }
  fragment.append(text.slice(last));
  return fragment;
}

function citationList(sources, turn) {
  return element("ol", { class: "citations" }, ...sources.map((s) => {
    const headings = (s.headings || []).filter((h) => h !== s.title).join(" › ");
    const where = [s.title, headings, s.page ? `page ${s.page}` : ""].filter(Boolean).join(" · ");
    return element("li", { id: `cite-${turn}-${s.number}`, value: s.number },
      element("strong", { text: s.doc_id }), where ? ` — ${where}` : "", ` (score ${s.score.toFixed(2)})`,
      element("span", { class: "snippet", text: s.snippet }));
  }));
}

function ledgerView(ledger) {
  const rows = (items, columns) => element("table", {},
    element("tr", {}, ...columns.map((c) => element("th", { text: c }))),
    ...items.map((item) => element("tr", {}, ...columns.map((c) => element("td", { text: String(item[c] ?? "") })))));
  const details = element("details", { class: "ledger" }, element("summary", { text: "Ledger: what was retrieved, packed and dropped" }));
  if (ledger.retrieval === "disabled") {
    details.append(element("p", { text: "Retrieval was off for this question." }));
    return details;
  }
  details.append(
    element("p", { text: `Collection ${ledger.collection}; searched with: “${ledger.query}” (${ledger.query_from}).` }),
    element("p", { text: `Prompt ${ledger.prompt_tokens} tokens of a ${ledger.context_window}-token window; ` +
      `${ledger.reserved_answer_tokens} reserved for the answer; passages had a budget of ${ledger.budget}; ` +
      `${ledger.dropped_turns} earlier messages dropped to fit.` }),
    element("p", { text: "Packed" }), rows(ledger.packed, ["number", "chunk_ids", "score", "tokens", "trimmed"]),
    element("p", { text: "Retrieved" }), rows(ledger.retrieved, ["chunk_id", "doc_id", "score"]),
    element("p", { text: "Dropped" }), rows(ledger.dropped, ["chunk_id", "score", "reason"]));
  return details;
}

async function* sse(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

async function ask(question) {
  const turn = ++state.turn;
  $("messages").append(element("div", { class: "turn user", text: question }));
  const answer = element("div", { class: "answer", "aria-live": "polite" });
  const box = element("div", { class: "turn assistant" }, answer);
  $("messages").append(box);
  const messages = [...state.history, { role: "user", content: question }];
  let text = "", sources = [], ledger = null, usage = null;
  const response = await api("/v1/chat/completions", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ model: $("model").value, messages, stream: true, stream_options: { include_usage: true },
                           retrieval: { collection: $("collection").value || undefined } }),
  });
  for await (const chunk of sse(response)) {
    if (chunk.error) throw new Error(chunk.error.message);
    if (chunk.sources) sources = chunk.sources;
    if (chunk.ledger) ledger = chunk.ledger;
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices || []) {
      if (choice.delta && choice.delta.content) {
        text += choice.delta.content;
        answer.textContent = text;
      }
    }
  }
  answer.replaceChildren(linkCitations(text, turn));
  if (sources.length) box.append(citationList(sources, turn));
  if (usage) box.append(element("div", { class: "meta", text: `${usage.prompt_tokens} prompt + ${usage.completion_tokens} answer tokens` }));
  if (ledger) box.append(ledgerView(ledger));
  state.history = [...messages, { role: "assistant", content: text }];
}

// -- documents (admin key) ---------------------------------------------------------------
async function loadSources() {
  const name = $("upload-collection").value;
  if (!keys().admin) { $("sources").replaceChildren(); return; }
  try {
    const listed = (await (await api(`/admin/collections/${encodeURIComponent(name)}/sources`, { admin: true })).json()).sources;
    $("sources").replaceChildren(...listed.map((s) => {
      const remove = element("button", { type: "button", text: "Remove", "aria-label": `remove ${s.source_id}` });
      remove.addEventListener("click", async () => {
        await api(`/admin/collections/${encodeURIComponent(name)}/documents/${encodeURIComponent(s.source_id)}`, { method: "DELETE", admin: true });
        await loadSources();
        await loadChoices();
      });
      return element("li", {}, element("span", { text: `${s.source_id} (${s.chunks} chunks)` }), remove);
    }));
  } catch (error) {
    $("sources").replaceChildren(element("li", { class: "hint", text: error.message }));
  }
}

async function upload(event) {
  event.preventDefault();
  const name = $("upload-collection").value;
  const form = new FormData();
  for (const file of $("files").files) form.append("files", file, file.name);
  $("job").textContent = "Uploading…";
  try {
    const accepted = await (await api(`/admin/collections/${encodeURIComponent(name)}/documents`, { method: "POST", body: form, admin: true })).json();
    let job = accepted;
    while (job.status === "running") {
      $("job").textContent = `Indexing: ${job.files_read} of ${job.files} files read, ${job.chunks_embedded} of ${job.chunks_read} chunks embedded`;
      await new Promise((resolve) => setTimeout(resolve, 500));
      job = await (await api(`/admin/jobs/${job.id}`, { admin: true })).json();
    }
    if (job.status === "failed") throw new Error(job.error);
    const r = job.report;
    const skipped = r.skipped.map((s) => `${s.path.split("/").pop()}: ${s.reason}`).join("; ");
    $("job").textContent = `Done: ${r.added.length} added, ${r.replaced.length} replaced, ${r.unchanged.length} unchanged, ` +
      `${r.skipped.length} skipped${skipped ? ` (${skipped})` : ""}. Version ${r.version_id}.`;
    $("files").value = "";
    await loadChoices();
    $("collection").value = name;
    await loadSources();
  } catch (error) {
    $("job").textContent = `Upload failed: ${error.message}`;
    $("job").className = "error";
  }
}

// -- wiring --------------------------------------------------------------------------------
$("client-key").value = keys().client;
$("admin-key").value = keys().admin;
$("save-keys").addEventListener("click", async () => {
  localStorage.setItem("ragtune.clientKey", $("client-key").value.trim());
  localStorage.setItem("ragtune.adminKey", $("admin-key").value.trim());
  $("keys").open = false;
  await loadChoices();
  await loadSources();
});
$("ask").addEventListener("submit", async (event) => {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question) return;
  $("question").value = "";
  $("send").disabled = true;
  status("Answering…");
  try {
    await ask(question);
    status("");
  } catch (error) {
    status(error.message, true);
  } finally {
    $("send").disabled = false;
  }
});
$("question").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("ask").requestSubmit(); }
});
$("new-chat").addEventListener("click", () => { state.history = []; $("messages").replaceChildren(); });
$("collection").addEventListener("change", () => { $("upload-collection").value = $("collection").value; loadSources(); });
$("upload-collection").addEventListener("change", loadSources);
$("upload").addEventListener("submit", upload);
loadChoices().then(loadSources);
