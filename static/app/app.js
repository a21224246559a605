// Agent Desk: the agent's app. Plain JavaScript, no build step.
// State comes from the server's `hello` after every (re)connect; what the agent
// types is kept in localStorage until the server has it (drafts, and sent
// messages until they come back with their client_id), so a dropped connection
// or a reload loses nothing and sends nothing twice.

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

const state = {
  agentId: null,
  status: "offline",
  conversations: new Map(), // id -> conversation (from the server)
  selected: null,
  offer: null,
  ws: null,
  connected: false,
  everConnected: false, // a `hello` came at least once: a drop now is a REconnect
  blocked: false, // closed with 4403: reconnecting would not help
  retry: 0,
  retryTimer: null,
  currency: "usd",
  earningsNext: null,
};

// --- storage: drafts and the outbox survive reloads and reconnects -------------------------

const store = {
  key: (name) => `agentdesk.${state.agentId || "anon"}.${name}`,
  get(name, fallback) {
    try {
      return JSON.parse(localStorage.getItem(this.key(name))) ?? fallback;
    } catch {
      return fallback;
    }
  },
  set(name, value) {
    localStorage.setItem(this.key(name), JSON.stringify(value));
  },
  draft: (id) => store.get("drafts", {})[id] || "",
  setDraft(id, text) {
    const drafts = store.get("drafts", {});
    if (text) drafts[id] = text;
    else delete drafts[id];
    store.set("drafts", drafts);
  },
  outbox: () => store.get("outbox", []),
  setOutbox: (items) => store.set("outbox", items),
};

// --- helpers -----------------------------------------------------------------------------

function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

async function api(path, { method = "GET", body } = {}) {
  const response = await fetch(path, {
    method,
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken(), Accept: "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401 || response.status === 403) {
    const data = await response.json().catch(() => ({}));
    // Logged out, expired or revoked: log in again (a suspended agent would only loop back here).
    if (response.status === 401 && data?.error?.code !== "account_suspended") window.location.assign("/app/login");
    throw Object.assign(new Error(data?.error?.detail || "Not allowed"), { data });
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw Object.assign(new Error(data?.error?.detail || `HTTP ${response.status}`), { data });
  return data;
}

function money(amount, currency = state.currency) {
  const format = new Intl.NumberFormat(undefined, { style: "currency", currency: currency.toUpperCase() });
  const digits = format.resolvedOptions().maximumFractionDigits;
  return format.format(amount / 10 ** digits);
}

function clock(at) {
  // A message's or an event's time, as the phone shows times: "14:05" (with the date when not today).
  const date = new Date(at);
  if (Number.isNaN(date.getTime())) return "";
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (date.toDateString() === new Date().toDateString()) return time;
  return `${date.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
}

function toast(text) {
  const node = document.createElement("div");
  node.className = "toast";
  node.textContent = text;
  $("#toasts").append(node);
  setTimeout(() => node.remove(), 5000);
}

function newId() {
  return crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random().toString(16).slice(2)}`;
}

const labels = { customer: "Customer", bot: "AI assistant", agent: "You", system: "Note", supervisor: "Supervisor" };

// --- views -------------------------------------------------------------------------------

const VIEWS = ["home", "chats", "earnings", "payouts", "profile"];

function route() {
  if (location.pathname === "/app/payouts") {
    const returning = new URLSearchParams(location.search).get("onboarding") === "return";
    history.replaceState(null, "", "/app/#payouts");
    loadPayouts(returning);
  }
  const view = VIEWS.includes(location.hash.slice(1)) ? location.hash.slice(1) : "home";
  for (const name of VIEWS) $(`#view-${name}`).hidden = name !== view;
  for (const link of $$(".tabbar a")) {
    if (link.dataset.view === view) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (view === "earnings") loadEarnings(true);
  if (view === "payouts") loadPayouts(false);
  if (view === "home") loadMe();
}

function show(view) {
  if (location.hash !== `#${view}`) location.hash = view;
  else route();
}

// --- the WebSocket -------------------------------------------------------------------------

function connect() {
  clearTimeout(state.retryTimer);
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws/agent/`);
  const previous = state.ws;
  state.ws = ws;
  // A socket the browser has not closed yet (it went offline and back) would deliver every
  // message a second time: only the newest socket is heard.
  if (previous && previous.readyState <= WebSocket.OPEN) previous.close(4000, "replaced");
  ws.addEventListener("open", () => {
    state.connected = true;
    state.retry = 0;
    $("#offline").hidden = true;
    renderChip();
  });
  ws.addEventListener("message", (event) => {
    if (state.ws !== ws) return;
    try {
      handle(JSON.parse(event.data));
    } catch (error) {
      console.error("bad message", error);
    }
  });
  ws.addEventListener("close", (event) => {
    if (state.ws !== ws) return;
    state.connected = false;
    document.body.dataset.connected = "false";
    renderChip();
    if (event.code === 4401) {
      window.location.assign("/app/login"); // the session or token ended (logout, password change, expiry)
      return;
    }
    if (event.code === 4403) {
      // Suspended (or not an agent): reconnecting would not help; say so and stop.
      $("#offline-text").textContent = "Your account cannot take conversations right now. Contact support.";
      $("#offline").hidden = false;
      state.blocked = true;
      renderChip();
      return;
    }
    // Reconnect with exponential backoff and full jitter (0.5 s .. 30 s).
    const delay = Math.random() * Math.min(30000, 500 * 2 ** state.retry);
    state.retry += 1;
    $("#offline-text").textContent = `Offline: reconnecting in ${Math.ceil(delay / 1000)} s…`;
    $("#offline").hidden = false;
    state.retryTimer = setTimeout(connect, delay);
  });
}

function send(message) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(JSON.stringify(message));
    return true;
  }
  return false;
}

setInterval(() => send({ type: "ping" }), 25000);
window.addEventListener("online", () => {
  if (!state.connected) connect();
});
// The phone lost its network: say so now, rather than when a ping times out.
window.addEventListener("offline", () => state.ws?.close(4000, "offline"));

function handle(message) {
  switch (message.type) {
    case "hello":
      return onHello(message);
    case "presence":
      setStatus(message.status);
      return explainPresence(message.status, message.reason);
    case "offer":
      return showOffer(message);
    case "offer.declined":
      if (state.offer && state.offer.offer_id === message.offer_id) hideOffer();
      toast("Offer declined. It goes to another agent.");
      return;
    case "offer.revoked":
      if (state.offer && state.offer.offer_id === message.offer_id) {
        hideOffer();
        const why = { expired: "The offer expired.", cancelled: "The customer left.", taken: "The offer was withdrawn." };
        toast(why[message.reason] || "The offer was withdrawn.");
      }
      return;
    case "conversation.assigned":
      hideOffer();
      upsertConversation(message.conversation);
      state.selected = message.conversation.id;
      renderChats();
      show("chats");
      return;
    case "message":
      return onMessage(message.conversation_id, message.message);
    case "conversation.closed":
      return onClosed(message.conversation_id, message.reason, message.detail);
    case "note":
      return onNote(message.conversation_id, message.note);
    case "conversation.transfer_pending":
      return onTransferPending(message);
    case "conversation.transferred":
      return onTransferred(message);
    case "error":
      return onError(message);
    default:
      return;
  }
}

function onHello(hello) {
  document.body.dataset.connected = "true"; // the state below is the server's (tests wait for this)
  state.everConnected = true;
  state.agentId = hello.agent.id;
  $("#agent-name").textContent = hello.agent.display_name;
  setStatus(hello.status);
  explainPresence(hello.status, hello.status_reason, { quiet: true }); // e.g. released while disconnected
  state.conversations = new Map();
  for (const conversation of hello.active_conversations) upsertConversation(conversation);
  if (!state.selected || !state.conversations.has(state.selected)) state.selected = hello.active_conversations[0]?.id || null;
  renderChats();
  if (hello.pending_offer) showOffer(hello.pending_offer);
  else hideOffer();
  if (hello.payouts) renderPayoutsWarning(hello.payouts);
  flushOutbox();
}

function onError(error) {
  if (error.code === "payouts_not_ready" || error.code === "not_approved") {
    const node = $("#presence-error");
    node.textContent = error.detail;
    node.hidden = false;
    show("home");
    return;
  }
  if (error.ref === "note.send" || error.ref === "help.request") onInternalRefused(error.ref);
  toast(error.detail || error.code);
  const accept = $("#offer-accept");
  accept.disabled = false;
  $("#offer-decline").disabled = false;
}

// --- presence ------------------------------------------------------------------------------

function setStatus(status) {
  state.status = status;
  renderChip();
  for (const button of $$(".segmented button")) button.setAttribute("aria-checked", String(button.dataset.status === status));
  if (status === "online") $("#presence-error").hidden = true;
  // The hint to go online is for when the agent is not; online, say what happens next instead.
  $("#home-hint").hidden = status === "online";
  $("#online-hint").hidden = status !== "online";
}

function renderChip() {
  // The chip shows the status in force only while the server can be heard; under the red
  // banner it says so, rather than "Online" for a status nobody can see is still true.
  const chip = $("#status-chip");
  const live = state.connected || !state.ws;
  const status = live ? state.status : state.blocked ? "offline" : "reconnecting";
  chip.dataset.status = status;
  if (status !== "reconnecting") chip.textContent = status[0].toUpperCase() + status.slice(1);
  else chip.textContent = state.everConnected ? "Reconnecting…" : "Connecting…";
}

// Why the server (or an operator) changed the status: said on Home until the agent picks a status again.
const PRESENCE_REASONS = {
  missed_offers: "You were set to Away because you missed offers in a row. Go online when you are ready for more.",
  disconnected:
    "You were disconnected for longer than the grace period, so you were set to Offline and your conversations went back to the queue.",
  operator: "An operator set you Offline; your conversations went back to the queue.",
  suspended: "Your account was suspended, so you are Offline. Contact support.",
  not_approved: "Your account is not approved to take conversations, so you are Offline. Contact support.",
};

function explainPresence(status, reason, { quiet = false } = {}) {
  const note = $("#presence-note");
  if (!reason) {
    note.hidden = true; // the agent chose it (here or on another device)
    return;
  }
  const text = PRESENCE_REASONS[reason] || `Your status was set to ${status} (${reason.replaceAll("_", " ")}).`;
  note.textContent = text;
  note.hidden = false;
  if (!quiet) toast(text);
}

for (const button of $$(".segmented button")) {
  button.addEventListener("click", () => {
    unlockAlerts();
    if (!send({ type: "presence", status: button.dataset.status })) toast("Not connected; try again in a moment.");
  });
}

// --- offers --------------------------------------------------------------------------------

let countdownTimer = null;
let audio = null;

function unlockAlerts() {
  // Sound needs a user gesture first; so does asking for notifications.
  if (!audio && window.AudioContext) audio = new AudioContext();
  if ("Notification" in window && Notification.permission === "default") Notification.requestPermission();
}

function alertAgent(offer) {
  try {
    navigator.vibrate?.([200, 100, 200]);
  } catch {}
  if (audio) {
    const oscillator = audio.createOscillator();
    const gain = audio.createGain();
    oscillator.frequency.value = 880;
    gain.gain.setValueAtTime(0.2, audio.currentTime);
    gain.gain.exponentialRampToValueAtTime(0.001, audio.currentTime + 0.6);
    oscillator.connect(gain).connect(audio.destination);
    oscillator.start();
    oscillator.stop(audio.currentTime + 0.6);
  }
  if (document.hidden && "Notification" in window && Notification.permission === "granted") {
    const body = `${money(offer.pay.amount, offer.pay.currency)} · ${offer.topic || "conversation"} · ${offer.language || ""}`;
    navigator.serviceWorker?.getRegistration("/app/").then((registration) => {
      if (registration) registration.showNotification("New conversation", { body, tag: offer.offer_id, renotify: true });
      else new Notification("New conversation", { body, tag: offer.offer_id });
    });
  }
}

function showOffer(offer) {
  const fresh = !state.offer || state.offer.offer_id !== offer.offer_id;
  state.offer = offer;
  $("#offer-summary").textContent = offer.summary || "A customer asked for a human.";
  $("#offer-language").textContent = offer.language || "any";
  $("#offer-topic").textContent = offer.topic || "general";
  $("#offer-priority").textContent = offer.priority;
  $("#offer-pay").textContent = money(offer.pay.amount, offer.pay.currency);
  const extra = [];
  if (offer.pay.surge && offer.pay.surge > 1) extra.push(`×${offer.pay.surge} surge`);
  if (offer.pay.quality_bonus) extra.push(`+${money(offer.pay.quality_bonus, offer.pay.currency)} if rated 4-5`);
  $("#offer-pay-extra").textContent = extra.join(" · ");
  showOfferTransfer(offer);
  $("#offer-accept").disabled = false;
  $("#offer-decline").disabled = false;
  $("#offer").hidden = false;
  const expires = Date.parse(offer.expires_at);
  const total = Math.max(expires - Date.now(), 1000);
  clearInterval(countdownTimer);
  const tick = () => {
    const left = Math.max(0, expires - Date.now());
    $("#offer-countdown").textContent = String(Math.ceil(left / 1000));
    $("#offer-bar").style.width = `${(100 * left) / total}%`;
    if (left <= 0) {
      hideOffer();
      toast("The offer expired.");
    }
  };
  tick();
  countdownTimer = setInterval(tick, 250);
  if (fresh) {
    alertAgent(offer);
    $("#offer-accept").focus();
  }
}

function hideOffer() {
  clearInterval(countdownTimer);
  state.offer = null;
  $("#offer").hidden = true;
}

$("#offer-accept").addEventListener("click", () => {
  if (!state.offer) return;
  if (send({ type: "offer.accept", offer_id: state.offer.offer_id })) {
    $("#offer-accept").disabled = true;
    $("#offer-decline").disabled = true;
  } else toast("Not connected; the offer stays open while it can.");
});

$("#offer-decline").addEventListener("click", () => {
  if (!state.offer) return;
  // Hidden when the server confirms (offer.declined), with a toast that says so.
  if (send({ type: "offer.decline", offer_id: state.offer.offer_id, reason: "declined in the app" })) {
    $("#offer-accept").disabled = true;
    $("#offer-decline").disabled = true;
  } else toast("Not connected; the offer stays open while it can.");
});

// --- conversations ---------------------------------------------------------------------------

function upsertConversation(conversation) {
  state.conversations.set(conversation.id, conversation);
}

function onMessage(conversationId, message) {
  const conversation = state.conversations.get(conversationId);
  if (!conversation) return;
  if (!conversation.messages.some((m) => m.id === message.id)) conversation.messages.push(message);
  if (message.client_id) store.setOutbox(store.outbox().filter((item) => item.client_id !== message.client_id));
  renderMessages(conversationId);
  if (message.role === "customer" && (document.hidden || state.selected !== conversationId)) {
    toast(`Customer: ${message.text.slice(0, 80)}`);
  }
}

// Why a conversation left the agent's screen: the server's `reason` (and `detail` for a cancel).
const CLOSED_REASONS = {
  resolved: "Resolved",
  unresolved: "Closed as not resolved",
  cancelled: "The customer left",
  requeued: "Moved back to the queue by an operator",
  admin: "Moved back to the queue by an operator",
  reassigned: "Given to another agent by an operator",
  transferred: "Transferred",
  agent_offline: "Moved back to the queue: an operator set you offline",
  agent_suspended: "Moved back to the queue: your account was suspended",
  agent_disconnected: "Moved back to the queue: you were disconnected for too long",
  no_first_reply: "Moved back to the queue: no first reply in time",
};

function onClosed(conversationId, reason, detail) {
  const conversation = state.conversations.get(conversationId);
  if (!conversation) return; // already gone from this screen
  state.conversations.delete(conversationId);
  store.setDraft(conversationId, "");
  store.setOutbox(store.outbox().filter((item) => item.conversation_id !== conversationId));
  if (state.selected === conversationId) state.selected = [...state.conversations.keys()][0] || null;
  renderChats();
  let why = CLOSED_REASONS[reason] || "Closed";
  if (reason === "cancelled" && detail === "admin") why = "Cancelled by an operator";
  toast(`${why}: ${conversation?.customer?.name || "conversation"}`);
  loadMe();
}

function flushOutbox() {
  // Messages typed while offline, or sent just before a drop: send again; client_id dedupes.
  for (const item of store.outbox()) {
    if (state.conversations.has(item.conversation_id)) {
      send({ type: "message.send", conversation_id: item.conversation_id, text: item.text, client_id: item.client_id });
    }
  }
}

function renderChats() {
  const tabs = $("#chat-tabs");
  const panels = $("#chat-panels");
  const ids = [...state.conversations.keys()];
  $("#no-chats").hidden = ids.length > 0;
  $("#stat-chats").textContent = String(ids.length);
  const badge = $("#chats-badge");
  badge.hidden = ids.length === 0;
  badge.textContent = String(ids.length);
  tabs.hidden = ids.length < 2;
  tabs.replaceChildren();
  for (const panel of $$(".chat", panels)) if (!state.conversations.has(panel.dataset.id)) panel.remove();
  for (const id of ids) {
    const conversation = state.conversations.get(id);
    const tab = document.createElement("button");
    tab.type = "button";
    tab.setAttribute("role", "tab");
    tab.id = `tab-${id}`;
    tab.setAttribute("aria-controls", `panel-${id}`);
    tab.setAttribute("aria-selected", String(id === state.selected));
    tab.textContent = conversation.customer?.name || `Customer ${ids.indexOf(id) + 1}`;
    tab.addEventListener("click", () => {
      state.selected = id;
      renderChats();
    });
    tabs.append(tab);
    let panel = $(`#panel-${CSS.escape(id)}`);
    if (!panel) panel = buildPanel(conversation);
    panel.hidden = id !== state.selected;
  }
}

function buildPanel(conversation) {
  const panel = $("#chat-panel").content.firstElementChild.cloneNode(true);
  const id = conversation.id;
  panel.id = `panel-${id}`;
  panel.dataset.id = id;
  panel.setAttribute("aria-labelledby", `tab-${id}`);
  $(".chat-title", panel).textContent = conversation.customer?.name || "Customer";
  $(".chat-meta", panel).textContent = [conversation.language, conversation.topic, conversation.priority, conversation.summary]
    .filter(Boolean)
    .join(" · ");
  const transcript = $(".transcript-list", panel);
  const entries = conversation.transcript || [];
  for (const entry of entries) transcript.append(messageItem(entry.role, entry.text, { at: entry.at }));
  $(".transcript-count", panel).textContent =
    entries.length === 1 ? "· 1 message" : `· ${entries.length ? entries.length : "no"} messages`;
  $(".live-title", panel).textContent = `Live chat with ${conversation.customer?.name || "the customer"}`;
  const textarea = $(".composer textarea", panel);
  const label = $(".composer label", panel);
  textarea.id = `compose-${id}`;
  label.htmlFor = textarea.id;
  textarea.value = store.draft(id);
  textarea.addEventListener("input", () => store.setDraft(id, textarea.value));
  $(".composer", panel).addEventListener("submit", (event) => {
    event.preventDefault();
    const text = textarea.value.trim();
    if (!text) return;
    const item = { client_id: newId(), conversation_id: id, text, at: new Date().toISOString() };
    store.setOutbox([...store.outbox(), item]);
    store.setDraft(id, "");
    textarea.value = "";
    renderMessages(id);
    send({ type: "message.send", conversation_id: id, text, client_id: item.client_id });
  });
  const note = $(".note", panel);
  note.id = `note-${id}`;
  $(".note-label", panel).htmlFor = note.id;
  for (const radio of $$(".resolve-form input[type=radio]", panel)) radio.name = `outcome-${id}`;
  $(".resolve-form", panel).addEventListener("submit", (event) => {
    event.preventDefault();
    const outcome = $(`input[name="outcome-${CSS.escape(id)}"]:checked`, panel).value;
    if (!send({ type: "conversation.resolve", conversation_id: id, outcome, note: note.value })) {
      toast("Not connected; try again in a moment.");
    }
  });
  buildInternal(panel, id);
  bindTransfer(panel, id);
  $("#chat-panels").append(panel);
  renderMessages(id);
  renderNotes(id);
  return panel;
}

// --- internal notes and help: agents and supervisors only, never the customer or the bot ----------

const NOTE_KINDS = { note: "Note", help: "Asked for help", whisper: "Supervisor", transfer: "Transfer note" };
const pendingNotes = new Map(); // client_id -> {conversation_id, text, at}: sent, not yet back from the server
const pendingHelp = new Map(); // conversation_id -> the help request's text, until the server has it

function buildInternal(panel, id) {
  const noteText = $(".note-form textarea", panel);
  noteText.id = `internal-note-${id}`;
  $(".note-form-label", panel).htmlFor = noteText.id;
  $(".note-form", panel).addEventListener("submit", (event) => {
    event.preventDefault();
    const text = noteText.value.trim();
    if (!text) return;
    const clientId = newId();
    if (!send({ type: "note.send", conversation_id: id, text, client_id: clientId })) {
      toast("Not connected; your note is kept here. Try again in a moment.");
      return;
    }
    pendingNotes.set(clientId, { conversation_id: id, text, at: new Date().toISOString() });
    noteText.value = "";
    renderNotes(id);
  });
  const helpText = $(".help-form textarea", panel);
  helpText.id = `help-${id}`;
  $(".help-label", panel).htmlFor = helpText.id;
  $(".help-form", panel).addEventListener("submit", (event) => {
    event.preventDefault();
    const text = helpText.value.trim();
    if (!text) {
      helpText.focus();
      return;
    }
    if (!send({ type: "help.request", conversation_id: id, text })) {
      toast("Not connected; try again in a moment.");
      return;
    }
    pendingHelp.set(id, text);
    helpText.value = "";
    $(".help", panel).open = false;
    showHelpStatus(id, "Asking a supervisor…");
  });
}

function showHelpStatus(id, text) {
  const status = $(`#panel-${CSS.escape(id)} .help-status`);
  if (!status) return;
  status.textContent = text;
  status.hidden = false;
}

function noteItem(note, { pending = false } = {}) {
  const item = document.createElement("li");
  item.className = `${note.kind || "note"}${pending ? " pending" : ""}`;
  const who = document.createElement("span");
  who.className = "who";
  const author = note.author?.display_name || "";
  who.textContent = pending ? "You · sending…" : [NOTE_KINDS[note.kind] || "Note", author].filter(Boolean).join(" · ");
  const shown = note.created_at ? clock(note.created_at) : "";
  if (shown && !pending) {
    const time = document.createElement("time");
    time.dateTime = note.created_at;
    time.textContent = shown;
    who.append(" ", time);
  }
  item.append(who, document.createTextNode(note.text));
  return item;
}

function renderNotes(id) {
  const panel = $(`#panel-${CSS.escape(id)}`);
  const conversation = state.conversations.get(id);
  if (!panel || !conversation) return;
  const notes = conversation.notes || [];
  const items = notes.map((note) => noteItem(note));
  for (const [clientId, item] of pendingNotes) {
    if (item.conversation_id === id && !notes.some((n) => n.client_id === clientId)) {
      items.push(noteItem({ kind: "note", text: item.text }, { pending: true }));
    }
  }
  $(".internal-notes", panel).replaceChildren(...items);
}

function onInternalRefused(ref) {
  // The server refused a note or a help request: its text goes back where it was typed, nothing lost.
  if (ref === "note.send") {
    for (const [clientId, item] of pendingNotes) {
      const box = $(`#internal-note-${CSS.escape(item.conversation_id)}`);
      if (box && !box.value) box.value = item.text;
      pendingNotes.delete(clientId);
      renderNotes(item.conversation_id);
    }
  } else {
    for (const [id, text] of pendingHelp) {
      const panel = $(`#panel-${CSS.escape(id)}`);
      if (!panel) continue;
      $(".help-form textarea", panel).value = text;
      $(".help", panel).open = true;
      $(".help-status", panel).hidden = true;
    }
    pendingHelp.clear();
  }
}

function onNote(conversationId, note) {
  const conversation = state.conversations.get(conversationId);
  if (!conversation) return;
  conversation.notes = conversation.notes || [];
  if (!conversation.notes.some((n) => n.id === note.id)) conversation.notes.push(note);
  if (note.client_id) pendingNotes.delete(note.client_id);
  if (note.kind === "help") pendingHelp.delete(conversationId);
  renderNotes(conversationId);
  if (note.kind === "help") showHelpStatus(conversationId, `Help requested at ${clock(note.created_at)}: a supervisor has been alerted.`);
  if (note.kind === "whisper") {
    showHelpStatus(conversationId, `${note.author?.display_name || "A supervisor"} answered (internal note below).`);
    toast(`Supervisor (internal): ${note.text.slice(0, 80)}`);
  }
}

function messageItem(role, text, { at = null, pending = false, author = null } = {}) {
  const item = document.createElement("li");
  item.className = `${role}${pending ? " pending" : ""}`;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = pending ? "You · sending…" : labels[role] || role;
  if (author && !pending) who.textContent += ` · ${author}`;
  const shown = at ? clock(at) : "";
  if (shown) {
    const time = document.createElement("time");
    time.dateTime = at;
    time.textContent = shown;
    who.append(" ", time);
  }
  item.append(who, document.createTextNode(text));
  return item;
}

function renderMessages(id) {
  const panel = $(`#panel-${CSS.escape(id)}`);
  const conversation = state.conversations.get(id);
  if (!panel || !conversation) return;
  const list = $(".live", panel);
  const sent = new Set(conversation.messages.map((m) => m.client_id).filter(Boolean));
  const items = conversation.messages.map((m) =>
    messageItem(m.role, m.text, { at: m.created_at, author: m.author?.display_name }),
  );
  for (const item of store.outbox()) {
    if (item.conversation_id === id && !sent.has(item.client_id)) {
      items.push(messageItem("agent", item.text, { at: item.at, pending: true }));
    }
  }
  list.replaceChildren(...items);
  list.lastElementChild?.scrollIntoView({ block: "nearest" });
}

// --- transfers: hand a conversation to a named agent or a queue, with a note ---------------------

function showOfferTransfer(offer) {
  // A transferred conversation: who it comes from and their note, and (upfront) the share they earn on top.
  const box = $("#offer-transfer");
  const transfer = offer.transfer;
  box.hidden = !transfer;
  $("#offer-title").textContent = transfer ? "Transferred conversation" : "New conversation";
  if (!transfer) return;
  $("#offer-transfer-from").textContent = `From ${transfer.from?.display_name || "another agent"}`;
  $("#offer-transfer-note").textContent = offer.transfer_note || "(no note)";
  const share = transfer.handling_share;
  $("#offer-transfer-share").textContent = share
    ? `You earn the full pay above; they earn ${money(share.amount, share.currency)} for the work so far.`
    : "You earn the full pay above.";
}

function bindTransfer(panel, id) {
  const form = $(".transfer-form", panel);
  for (const radio of $$(".transfer-form input[type=radio]", panel)) radio.name = `transfer-to-${id}`;
  const pairs = [
    [".transfer-username", ".transfer-agent-label", "user"],
    [".transfer-language", ".transfer-language-label", "lang"],
    [".transfer-skills", ".transfer-skills-label", "skills"],
    [".transfer-note", ".transfer-note-label", "note"],
  ];
  for (const [input, label, suffix] of pairs) {
    $(input, panel).id = `transfer-${suffix}-${id}`;
    $(label, panel).htmlFor = `transfer-${suffix}-${id}`;
  }
  const choose = () => {
    const toQueue = $(`input[name="transfer-to-${CSS.escape(id)}"]:checked`, panel).value === "queue";
    $(".transfer-agent", panel).hidden = toQueue;
    $(".transfer-queue", panel).hidden = !toQueue;
  };
  for (const radio of $$(`input[name="transfer-to-${CSS.escape(id)}"]`, panel)) radio.addEventListener("change", choose);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const toQueue = $(`input[name="transfer-to-${CSS.escape(id)}"]:checked`, panel).value === "queue";
    let to;
    if (toQueue) {
      const skills = $(".transfer-skills", panel).value.split(",").map((v) => v.trim()).filter(Boolean);
      to = { queue: { language: $(".transfer-language", panel).value.trim(), skills } };
    } else {
      const username = $(".transfer-username", panel).value.trim();
      if (!username) {
        toast("Enter the username of the agent to transfer to.");
        return;
      }
      to = { agent: username };
    }
    const note = $(".transfer-note", panel).value;
    if (!send({ type: "conversation.transfer", conversation_id: id, to, note })) toast("Not connected; try again in a moment.");
  });
}

function describeTarget(to) {
  if (to?.agent) return to.agent;
  const queue = to?.queue || {};
  return `the ${[queue.language, ...(queue.skills || [])].filter(Boolean).join(" / ") || "general"} queue`;
}

function describeShare(share) {
  if (!share) return "";
  if (!share.eligible) return " No handling share: you had not written to the customer.";
  return ` You earn ${money(share.amount, share.currency)} for your work when the next agent accepts.`;
}

function onTransferPending(message) {
  const panel = $(`#panel-${CSS.escape(message.conversation_id)}`);
  if (panel) {
    $(".transfer-share", panel).textContent = `Waiting for ${describeTarget(message.to)} to accept…`;
    $(".transfer", panel).open = false;
  }
  toast(`Offered to ${describeTarget(message.to)}. Keep helping the customer until they accept.${describeShare(message.handling_share)}`);
}

function onTransferred(message) {
  const conversation = state.conversations.get(message.conversation_id);
  const fallback = message.fallback ? ` (${message.fallback.agent} ${message.fallback.reason === "declined" ? "declined" : "did not answer"})` : "";
  toast(`Transferred to ${describeTarget(message.to)}${fallback}: ${conversation?.customer?.name || "conversation"}.${describeShare(message.handling_share)}`);
  if (!conversation) return;
  state.conversations.delete(message.conversation_id);
  store.setDraft(message.conversation_id, "");
  store.setOutbox(store.outbox().filter((item) => item.conversation_id !== message.conversation_id));
  if (state.selected === message.conversation_id) state.selected = [...state.conversations.keys()][0] || null;
  renderChats();
  loadMe();
}

// --- home, earnings, payouts, profile ------------------------------------------------------------

async function loadMe() {
  try {
    const me = await api("/api/v1/agent/me");
    state.agentId = me.id;
    state.currency = me.currency;
    $("#agent-name").textContent = me.display_name;
    $("#stat-today").textContent = money(me.today, me.currency);
    $("#stat-surge").textContent = me.surge > 1 ? `×${me.surge.toFixed(2)}` : "none";
    $("#profile-languages").value = me.languages.join(", ");
    $("#profile-skills").value = me.skills.join(", ");
    $("#profile-capacity").textContent = String(me.capacity);
    renderPayoutsWarning(me.payouts);
  } catch (error) {
    console.warn(error);
  }
}

function renderPayoutsWarning(payouts) {
  const blocked = payouts.stripe_configured && !payouts.can_receive_transfers;
  $("#payouts-warning").hidden = !blocked;
  $("#payouts-warning-text").textContent = payouts.detail || "";
}

const KINDS = {
  resolution: "Resolution",
  quality_bonus: "Quality bonus",
  floor_topup: "Earnings floor top-up",
  handling_share: "Handling share (transferred)",
};
const STATES = {
  held: "On hold",
  pending: "Waiting",
  submitted: "Sending",
  paid: "Transferred",
  failed: "Failed",
  offset: "Kept back",
  disputed: "Disputed",
};

function earningSubject(item) {
  // Which conversation (or week) the money is for.
  const node = document.createElement("div");
  node.className = "conversation small";
  const c = item.conversation;
  if (c) node.textContent = [c.customer_name, c.topic, c.summary].filter(Boolean).join(" · ") || "A conversation";
  else if (item.week_start) node.textContent = `Week of ${new Date(item.week_start).toLocaleDateString()}`;
  else node.hidden = true;
  return node;
}

function earningWhy(waiting) {
  // Why the money has not reached the agent yet, from the server's `waiting` {reason, detail, until}.
  if (!waiting) return null;
  const node = document.createElement("div");
  node.className = `why small ${waiting.reason}`;
  if (waiting.reason === "on_hold" && waiting.until) {
    node.textContent = `On hold until ${clock(waiting.until)}: the customer may still dispute the resolution.`;
  } else if (waiting.until) {
    node.textContent = `${waiting.detail} Next try ${clock(waiting.until)}.`;
  } else node.textContent = waiting.detail;
  return node;
}

async function loadEarnings(reset) {
  const params = new URLSearchParams({ limit: "20" });
  if (!reset && state.earningsNext) {
    params.set("before", state.earningsNext.before);
    params.set("before_id", state.earningsNext.before_id);
  }
  try {
    const data = await api(`/api/v1/agent/earnings?${params}`);
    state.currency = data.currency;
    $("#earn-pending").textContent = money(data.pending);
    $("#earn-transferred").textContent = money(data.transferred);
    $("#earn-paid-out").textContent = money(data.paid_out);
    const list = $("#earn-items");
    if (reset) list.replaceChildren();
    for (const item of data.items) {
      const row = document.createElement("li");
      row.dataset.id = item.id;
      const left = document.createElement("div");
      const what = document.createElement("div");
      what.className = "what";
      what.textContent = KINDS[item.kind] || item.kind;
      const when = document.createElement("div");
      when.className = "muted small";
      when.textContent = new Date(item.created_at).toLocaleString();
      left.append(what, earningSubject(item), when);
      const why = earningWhy(item.waiting);
      if (why) left.append(why);
      const right = document.createElement("div");
      right.style.textAlign = "right";
      const amount = document.createElement("div");
      amount.className = "amount";
      amount.textContent = money(item.amount, item.currency);
      const chip = document.createElement("span");
      chip.className = `state ${item.status}`;
      chip.textContent = STATES[item.status] || item.status;
      right.append(amount, chip);
      row.append(left, right);
      list.append(row);
    }
    if (!data.items.length && reset) {
      const empty = document.createElement("li");
      empty.className = "muted";
      empty.textContent = "No earnings yet. Resolve a conversation to earn its pay.";
      list.append(empty);
    }
    state.earningsNext = data.next;
    $("#earn-more").hidden = !data.has_more;
  } catch (error) {
    toast(error.message);
  }
}

$("#earn-more").addEventListener("click", () => loadEarnings(false));

async function loadPayouts(refresh) {
  try {
    const status = await api(`/api/v1/agent/payouts${refresh ? "?refresh=1" : ""}`);
    const due = $("#payouts-due");
    due.replaceChildren();
    const button = $("#payouts-link");
    if (!status.stripe_configured) {
      $("#payouts-state").textContent = "Payouts are not set up on this platform yet. Your earnings accrue meanwhile.";
      button.hidden = true;
    } else if (status.can_receive_transfers) {
      $("#payouts-state").textContent = "Your Stripe account can receive transfers. You are all set.";
      button.hidden = false;
      button.textContent = "Update payout details";
    } else {
      $("#payouts-state").textContent = status.detail || "Set up payouts to go online.";
      for (const field of [...status.requirements_past_due, ...status.requirements_due]) {
        const li = document.createElement("li");
        li.textContent = field.replaceAll("_", " ").replaceAll(".", ": ");
        due.append(li);
      }
      button.hidden = false;
      button.textContent = status.account_id ? "Continue with Stripe" : "Set up payouts with Stripe";
    }
    renderPayoutsWarning(status);
  } catch (error) {
    $("#payouts-state").textContent = error.message;
  }
}

$("#payouts-link").addEventListener("click", async () => {
  const button = $("#payouts-link");
  button.disabled = true;
  $("#payouts-error").hidden = true;
  try {
    const link = await api("/api/v1/agent/payouts/onboarding", { method: "POST", body: {} });
    window.location.assign(link.url);
  } catch (error) {
    $("#payouts-error").textContent = error.message;
    $("#payouts-error").hidden = false;
    button.disabled = false;
  }
});

$("#profile-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const split = (value) => value.split(",").map((v) => v.trim()).filter(Boolean);
  const error = $("#profile-error");
  error.hidden = true;
  try {
    await api("/api/v1/agent/me", {
      method: "PATCH",
      body: { languages: split($("#profile-languages").value), skills: split($("#profile-skills").value) },
    });
    toast("Profile saved.");
    loadMe();
  } catch (failure) {
    const fields = failure.data?.error?.fields;
    error.textContent = fields ? Object.values(fields).join(" ") : failure.message;
    error.hidden = false;
  }
});

// --- start ---------------------------------------------------------------------------------------

window.addEventListener("hashchange", route);
document.addEventListener("visibilitychange", () => {
  if (!document.hidden) loadMe();
});
if ("serviceWorker" in navigator) navigator.serviceWorker.register("/app/sw.js", { scope: "/app/" }).catch(() => {});
route();
connect();
setInterval(loadMe, 30000);
