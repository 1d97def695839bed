// Hyphae's web UI: the owner's chats on this device. Plain JavaScript, no build step: it talks to
// the JSON API under /app/api (the cookie set by the link `hyphae up` printed signs it in) and
// follows live updates from /app/api/events. Text from the network only ever goes into the page
// as textContent, never as HTML.
'use strict';

const state = {
  me: null,
  rooms: [],
  invites: [],
  nearby: [],
  // The room shown, or null.
  current: null,
  // Per room: { items: Map(event_id -> item), order: [event_id], loaded }.
  timelines: new Map(),
  // How far the owner's messages got, by event id: the latest word wins.
  deliveries: new Map(),
  unread: new Set(),
  online: false,
  // GET /backup's answer: the subscription and key backup, or null before the first.
  backup: null,
  // GET /policy's answer: the owner's subscriptions and own lists, or null before the first.
  policy: null,
  // Blurred items the owner chose to see, by event id.
  revealed: new Set(),
};

const NEARBY_EVERY_MS = 4000;
// The backup's progress has no event of its own: while settings are open, look this often.
const BACKUP_EVERY_MS = 3000;
let pendingSeq = 0;

// --- small helpers ------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(path, opts) {
  const ns = 'http://www.w3.org/2000/svg';
  const node = document.createElementNS(ns, 'svg');
  node.setAttribute('viewBox', '0 0 24 24');
  node.setAttribute('aria-hidden', 'true');
  const p = document.createElementNS(ns, 'path');
  p.setAttribute('d', path);
  if (opts && opts.stroke) {
    p.setAttribute('fill', 'none');
    p.setAttribute('stroke', 'currentColor');
    p.setAttribute('stroke-width', '2');
    p.setAttribute('stroke-linecap', 'round');
    p.setAttribute('stroke-linejoin', 'round');
  } else {
    p.setAttribute('fill', 'currentColor');
  }
  node.append(p);
  return node;
}

const LOCK = 'M7 10V8a5 5 0 0 1 10 0v2h1a1 1 0 0 1 1 1v9a1 1 0 0 1-1 1H6a1 1 0 0 1-1-1v-9a1 1 0 0 1 1-1h1Zm2 0h6V8a3 3 0 0 0-6 0v2Z';
const CHECK = 'M5 12.5l4.5 4.5L19 7.5';
const CLOCK = 'M12 7v5l3 2M12 21a9 9 0 1 1 0-18 9 9 0 0 1 0 18Z';

function lockBadge() {
  return el('span', { class: 'lock', title: 'End-to-end encrypted', 'aria-label': 'encrypted' }, svg(LOCK));
}

async function api(method, path, body) {
  const init = { method, headers: {}, credentials: 'same-origin', cache: 'no-store' };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch('/app/api' + path, init);
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    // Not JSON (an axum rejection, say): the status says enough.
  }
  if (response.status === 401) signedOut();
  if (!response.ok) {
    const error = new Error((data && data.error) || `${response.status} ${response.statusText}`);
    // Lets a caller tell causes apart (M_FORBIDDEN, …) and a test see which one it was.
    error.errcode = (data && data.errcode) || null;
    throw error;
  }
  return data;
}

function signedOut() {
  document.body.textContent = '';
  document.body.append(el('p', { class: 'signed-out', text: 'This page is not signed in. Open the link `hyphae up` printed (it holds a key).' }));
}

let toastTimer = null;
function toast(message) {
  const box = $('toast');
  box.textContent = message;
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { box.hidden = true; }, 5000);
}

function debounce(fn, ms) {
  let timer = null;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(fn, ms);
  };
}

function hue(text) {
  let h = 0;
  for (const c of text || '') h = (h * 31 + c.charCodeAt(0)) % 360;
  return h;
}

function avatar(node, name, id) {
  node.textContent = (name || '?').replace(/^[@#!]/, '').charAt(0).toUpperCase() || '?';
  node.style.setProperty('--hue', String(hue(id || name)));
  return node;
}

function localpart(userId) {
  const m = /^@([^:]+):/.exec(userId || '');
  return m ? m[1] : userId;
}

function shortServer(name) {
  return name ? name.slice(0, 8) + '…' + name.slice(-4) : '';
}

// Powers of 1024, as backup quotas are given (`--quota 2G`).
function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} ${bytes === 1 ? 'byte' : 'bytes'}`;
  const units = ['KB', 'MB', 'GB', 'TB'];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(1)} ${units[unit]}`;
}

const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;

function peerName(peer) {
  if (peer.display_name) return peer.display_name;
  if (peer.user_id) return localpart(peer.user_id);
  return 'Device ' + shortServer(peer.server_name);
}

// What a user is called: their display name where this page knows it.
function nameOf(userId) {
  if (state.me && userId === state.me.user_id) return state.me.display_name || localpart(userId);
  for (const peer of state.nearby) {
    if (peer.user_id === userId && peer.display_name) return peer.display_name;
  }
  for (const room of state.rooms) {
    for (const member of room.members || []) {
      if (member.user_id === userId && member.display_name) return member.display_name;
    }
  }
  return localpart(userId);
}

const sameDay = (a, b) => a.toDateString() === b.toDateString();

function timeOf(ts) {
  const date = new Date(ts);
  return date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

function dayOf(ts) {
  const date = new Date(ts);
  const today = new Date();
  const yesterday = new Date(Date.now() - 86400000);
  if (sameDay(date, today)) return 'Today';
  if (sameDay(date, yesterday)) return 'Yesterday';
  return date.toLocaleDateString([], { weekday: 'short', day: 'numeric', month: 'short', year: 'numeric' });
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch (_) {
    // Without the clipboard API (an older browser): select and copy.
    const area = el('textarea', { class: 'offscreen' });
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand('copy');
    area.remove();
  }
  const before = button.textContent;
  button.textContent = 'Copied';
  setTimeout(() => { button.textContent = before; }, 1500);
}

// --- navigation ---------------------------------------------------------------------------

function route() {
  const hash = location.hash || '#/';
  const roomMatch = /^#\/room\/(.+)$/.exec(hash);
  $('welcome').hidden = true;
  $('room').hidden = true;
  $('settings').hidden = true;
  if (roomMatch) {
    const roomId = decodeURIComponent(roomMatch[1]);
    document.body.dataset.view = 'room';
    $('room').hidden = false;
    openRoom(roomId);
  } else if (hash === '#/settings') {
    document.body.dataset.view = 'settings';
    state.current = null;
    $('settings').hidden = false;
    renderSettings();
    refreshNearby();
    refreshBackup();
    refreshPolicy();
  } else {
    document.body.dataset.view = 'list';
    state.current = null;
    $('welcome').hidden = false;
  }
  renderRooms();
}

function goRoom(roomId) {
  location.hash = '#/room/' + encodeURIComponent(roomId);
}

// --- loading ------------------------------------------------------------------------------

async function refreshMe() {
  state.me = await api('GET', '/me');
  renderMe();
}

async function refreshRooms() {
  try {
    state.rooms = await api('GET', '/rooms');
  } catch (e) {
    toast('Could not load chats: ' + e.message);
  }
  renderRooms();
  if (state.current) renderRoomHeader();
}

async function refreshInvites() {
  try {
    state.invites = await api('GET', '/invites');
  } catch (e) {
    toast('Could not load invites: ' + e.message);
  }
  renderInvites();
}

let nearbyBusy = false;
async function refreshNearby() {
  if (nearbyBusy) return;
  nearbyBusy = true;
  try {
    state.nearby = await api('GET', '/nearby');
    renderNearby();
    if (document.body.dataset.view === 'settings') renderKnownPeers();
  } catch (_) {
    // The next round tries again; nearby peers are a hint, not a must.
  } finally {
    nearbyBusy = false;
  }
}

// Each read or change of the backup takes a number; an answer that a later one overtook is
// dropped, so a slow poll cannot show "not backed up" just after subscribing.
let backupSeq = 0;
async function refreshBackup() {
  const seq = ++backupSeq;
  try {
    const backup = await api('GET', '/backup');
    if (seq === backupSeq) {
      state.backup = backup;
      renderBackup();
    }
  } catch (e) {
    if (seq !== backupSeq) return;
    const status = $('backup-status');
    status.textContent = 'Could not read the backup status: ' + e.message;
    status.dataset.state = 'unknown';
  }
}

// A change's answer is the new status.
function backupChanged(backup) {
  backupSeq += 1;
  state.backup = backup;
  renderBackup();
}

const refreshRoomsSoon = debounce(refreshRooms, 150);
const reloadCurrentSoon = debounce(async () => {
  const roomId = state.current;
  if (!roomId) return;
  try {
    await loadTimeline(roomId);
  } catch (_) {
    return;
  }
  if (state.current === roomId) renderTimeline(false);
}, 500);
const refreshInvitesSoon = debounce(refreshInvites, 150);

function timelineOf(roomId) {
  let timeline = state.timelines.get(roomId);
  if (!timeline) {
    timeline = { items: new Map(), order: [], loaded: false };
    state.timelines.set(roomId, timeline);
  }
  return timeline;
}

function upsert(timeline, item) {
  const old = timeline.items.get(item.event_id);
  if (!old) timeline.order.push(item.event_id);
  timeline.items.set(item.event_id, item);
  if (item.delivery) state.deliveries.set(item.event_id, item.delivery);
}

async function loadTimeline(roomId) {
  const items = await api('GET', `/rooms/${encodeURIComponent(roomId)}/timeline?limit=100`);
  const timeline = timelineOf(roomId);
  // What arrived live while loading stays; the page's order is the server's, then arrivals.
  const arrived = timeline.order.filter((id) => !items.some((i) => i.event_id === id));
  const kept = new Map(timeline.items);
  timeline.items = new Map();
  timeline.order = [];
  for (const item of items) upsert(timeline, item);
  for (const id of arrived) {
    const item = kept.get(id);
    if (item) upsert(timeline, item);
  }
  timeline.loaded = true;
}

async function openRoom(roomId) {
  const changed = state.current !== roomId;
  state.current = roomId;
  state.unread.delete(roomId);
  if (!state.rooms.some((r) => r.room_id === roomId)) await refreshRooms();
  renderRoomHeader();
  if (changed) {
    $('room-invite').hidden = true;
    $('timeline').textContent = '';
  }
  renderTimeline(true);
  try {
    await loadTimeline(roomId);
  } catch (e) {
    toast('Could not load the chat: ' + e.message);
  }
  if (state.current === roomId) renderTimeline(changed);
  if (changed && matchMedia('(min-width: 760px)').matches) $('composer-text').focus();
}

async function resync() {
  await Promise.allSettled([refreshMe(), refreshRooms(), refreshInvites(), refreshNearby()]);
  for (const [roomId, timeline] of state.timelines) {
    if (roomId === state.current) {
      await loadTimeline(roomId).catch(() => {});
      renderTimeline(false);
    } else {
      timeline.loaded = false;
    }
  }
}

// --- live updates -------------------------------------------------------------------------

let retryMs = 1000;
function connect() {
  const events = new EventSource('/app/api/events');
  let dropped = false;
  events.onopen = () => {
    setOnline(true);
    retryMs = 1000;
    if (dropped || connect.everOpen) resync();
    connect.everOpen = true;
  };
  events.onmessage = (message) => {
    let event;
    try {
      event = JSON.parse(message.data);
    } catch (_) {
      return;
    }
    handle(event);
  };
  events.onerror = () => {
    setOnline(false);
    dropped = true;
    if (events.readyState === EventSource.CLOSED) {
      // The browser gave up (an error status): try again later, more slowly each time.
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 30000);
    }
  };
}

function setOnline(online) {
  state.online = online;
  const status = $('connection');
  status.dataset.state = online ? 'online' : 'offline';
  status.textContent = online ? 'on this device' : 'reconnecting…';
}

function handle(event) {
  switch (event.type) {
    case 'timeline': {
      const item = event.item;
      const timeline = timelineOf(item.room_id);
      // Replaces the local echo of a message sent from here (same event id), or an item that
      // could not be decrypted before.
      upsert(timeline, item);
      if (!state.rooms.some((r) => r.room_id === item.room_id)) refreshRoomsSoon();
      if (item.room_id === state.current) {
        renderTimeline(false);
      } else if (!item.own && item.kind !== 'notice' && !isPolicyList(item.room_id)) {
        state.unread.add(item.room_id);
        renderRooms();
      }
      if (item.kind === 'notice') {
        // Someone joined or was renamed: names in the list and in earlier lines may change.
        refreshRoomsSoon();
        if (item.room_id === state.current) reloadCurrentSoon();
      }
      break;
    }
    case 'delivery':
      state.deliveries.set(event.event_id, event.delivery);
      if (event.room_id === state.current) renderTimeline(false);
      break;
    case 'invite':
      refreshInvitesSoon();
      break;
    case 'rooms':
      refreshRoomsSoon();
      refreshInvitesSoon();
      break;
    case 'resync':
      resync();
      break;
    default:
      break;
  }
}

// --- rendering ----------------------------------------------------------------------------

function renderMe() {
  if (!state.me) return;
  const name = state.me.display_name || localpart(state.me.user_id);
  $('me-name').textContent = name;
  avatar($('me-avatar'), name, state.me.user_id);
  document.title = `Hyphae · ${name}`;
}

function renderInvites() {
  const list = $('invites');
  list.textContent = '';
  $('invites-section').hidden = state.invites.length === 0;
  for (const invite of state.invites) {
    const inviter = invite.inviter ? nameOf(invite.inviter) : 'Someone';
    const title = invite.is_direct || !invite.name ? inviter : invite.name;
    const what = invite.is_direct ? 'wants to chat with you' : `${inviter} invited you to a group`;
    const accept = el('button', { class: 'primary accept', text: 'Accept' });
    const decline = el('button', { class: 'decline', text: 'Decline' });
    accept.addEventListener('click', async () => {
      accept.disabled = decline.disabled = true;
      try {
        await api('POST', `/invites/${encodeURIComponent(invite.room_id)}/accept`);
        state.invites = state.invites.filter((i) => i.room_id !== invite.room_id);
        renderInvites();
        await refreshRooms();
        goRoom(invite.room_id);
      } catch (e) {
        toast('Could not join: ' + e.message);
        accept.disabled = decline.disabled = false;
      }
    });
    decline.addEventListener('click', async () => {
      accept.disabled = decline.disabled = true;
      try {
        await api('POST', `/invites/${encodeURIComponent(invite.room_id)}/decline`);
        state.invites = state.invites.filter((i) => i.room_id !== invite.room_id);
        renderInvites();
      } catch (e) {
        toast('Could not decline: ' + e.message);
        accept.disabled = decline.disabled = false;
      }
    });
    // An invite from someone one of the owner's lists bans: said plainly before accepting.
    const flag = invite.policy
      ? el('span', { class: 'policy-flag', dataset: { level: invite.policy.level } }, WARNING_SIGN, ' ', verdictText(invite.policy))
      : null;
    list.append(el('li', { class: 'invite card' + (invite.policy ? ' flagged' : ''), dataset: { roomId: invite.room_id } },
      avatar(el('span', { class: 'avatar', 'aria-hidden': 'true' }), title, invite.room_id),
      el('div', { class: 'who' },
        el('strong', { text: title }),
        el('span', { class: 'sub' }, what, invite.encrypted ? [' ', lockBadge()] : null),
        flag),
      el('div', { class: 'actions' }, accept, decline)));
  }
}

function roomSub(room) {
  const joined = (room.members || []).filter((m) => m.membership === 'join');
  const invited = (room.members || []).filter((m) => m.membership === 'invite');
  const parts = [];
  if (room.is_direct) {
    parts.push('Direct chat');
    if (invited.length && joined.length < 2) parts.push('invited, not joined yet');
  } else {
    parts.push(`${joined.length} member${joined.length === 1 ? '' : 's'}`);
    if (invited.length) parts.push(`${invited.length} invited`);
  }
  if (room.encrypted) parts.push('end-to-end encrypted');
  return parts.join(' · ');
}

// For a DM, the other person; for a group, nobody.
function otherMember(room) {
  if (!room.is_direct || !state.me) return null;
  return (room.members || []).find((m) => m.user_id !== state.me.user_id) || null;
}

function roomTitle(room) {
  if (room.name) return room.name;
  const others = (room.members || []).filter((m) => state.me && m.user_id !== state.me.user_id);
  if (others.length) return others.map((m) => m.display_name || localpart(m.user_id)).join(', ');
  return 'Empty chat';
}

// A DM looks like the person in it (the same colour as in the nearby list).
function avatarId(room) {
  const other = otherMember(room);
  return other ? other.user_id : room.room_id;
}

// Policy lists are rooms too, but not chats: they are shown in the moderation settings.
const chats = () => state.rooms.filter((r) => !r.policy_list);

function renderRooms() {
  const list = $('rooms');
  list.textContent = '';
  const rooms = chats();
  $('no-rooms').hidden = rooms.length > 0;
  const sorted = [...rooms].sort((a, b) => roomTitle(a).localeCompare(roomTitle(b)));
  for (const room of sorted) {
    const title = roomTitle(room);
    const link = el('a', {
      class: 'room-link' + (room.room_id === state.current ? ' active' : ''),
      href: '#/room/' + encodeURIComponent(room.room_id),
      dataset: { roomId: room.room_id, direct: room.is_direct ? 'true' : 'false' },
    },
    avatar(el('span', { class: 'avatar' + (room.is_direct ? '' : ' group'), 'aria-hidden': 'true' }), title, avatarId(room)),
    el('div', { class: 'who' },
      el('strong', { text: title }),
      el('span', { class: 'sub' }, room.encrypted ? lockBadge() : null, room.is_direct ? 'Direct chat' : 'Group')),
    state.unread.has(room.room_id) ? el('span', { class: 'unread', 'aria-label': 'new messages' }) : null);
    list.append(el('li', {}, link));
  }
  // Ids for the invite field's suggestions.
  const ids = $('people-ids');
  ids.textContent = '';
  for (const peer of state.nearby) {
    if (peer.user_id) ids.append(el('option', { value: peer.user_id, label: peerName(peer) }));
  }
}

function renderNearby() {
  const list = $('nearby');
  list.textContent = '';
  const peers = state.nearby.filter((p) => p.connected);
  $('no-nearby').hidden = peers.length > 0;
  for (const peer of peers) {
    const name = peerName(peer);
    const chat = el('button', {
      class: 'chat',
      text: 'Chat',
      disabled: !peer.user_id,
      title: peer.user_id ? `Start a chat with ${name}` : 'Nobody is signed in on this device',
    });
    chat.addEventListener('click', async () => {
      chat.disabled = true;
      try {
        const { room_id: roomId } = await api('POST', '/dm', { user_id: peer.user_id });
        await refreshRooms();
        goRoom(roomId);
      } catch (e) {
        toast('Could not start the chat: ' + e.message);
      } finally {
        chat.disabled = false;
      }
    });
    list.append(el('li', { class: 'peer', dataset: { userId: peer.user_id || '', serverName: peer.server_name } },
      avatar(el('span', { class: 'avatar', 'aria-hidden': 'true' }), name, peer.user_id || peer.server_name),
      el('div', { class: 'who' },
        el('strong', { class: 'peer-name', text: name }),
        el('span', { class: 'sub' }, el('span', { class: 'dot online', 'aria-hidden': 'true' }),
          peer.user_id ? peer.user_id.replace(/:(.{8}).*$/, ':$1…') : shortServer(peer.server_name))),
      chat));
  }
  renderGroupPeople();
  renderRooms();
}

function renderGroupPeople() {
  const box = $('group-people');
  const checked = new Set([...box.querySelectorAll('input:checked')].map((i) => i.value));
  box.textContent = '';
  const people = state.nearby.filter((p) => p.user_id);
  if (!people.length) box.append(el('span', { class: 'sub', text: 'Nobody nearby yet.' }));
  for (const peer of people) {
    box.append(el('label', { class: 'check' },
      el('input', { type: 'checkbox', value: peer.user_id, checked: checked.has(peer.user_id) }),
      peerName(peer)));
  }
}

function renderRoomHeader() {
  const room = state.rooms.find((r) => r.room_id === state.current);
  const title = room ? roomTitle(room) : 'Chat';
  $('room-name').textContent = title;
  $('room-sub').textContent = room ? roomSub(room) : '';
  avatar($('room-avatar'), title, room ? avatarId(room) : state.current);
  $('room-avatar').classList.toggle('group', !!room && !room.is_direct);
  $('room-invite-button').hidden = !room || room.is_direct;
  $('room').dataset.encrypted = room && room.encrypted ? 'true' : 'false';
}

function deliveryOf(item) {
  if (item.failed) return { state: 'failed', text: 'not sent', title: item.failed };
  if (item.pending) return { state: 'sending', text: 'sending…', title: 'Being stored on this device' };
  const d = state.deliveries.get(item.event_id) || item.delivery;
  if (!d) return { state: 'stored', text: 'stored', title: 'Stored on this device' };
  const base = { sentTo: d.sent_to, of: d.of };
  if (d.of === 0) return { ...base, state: 'stored', text: 'stored', title: 'Stored on this device; nobody else is in the chat yet' };
  if (d.sent_to === 0) return { ...base, state: 'stored', text: 'stored', title: `Stored on this device; on its way to ${d.of} other device${d.of === 1 ? '' : 's'}` };
  return {
    ...base,
    state: d.sent_to >= d.of ? 'sent' : 'partial',
    text: `sent to ${d.sent_to} of ${d.of}`,
    title: `Taken by ${d.sent_to} of the ${d.of} other device${d.of === 1 ? '' : 's'} in the chat`,
  };
}

function renderItem(item, previous) {
  if (item.kind === 'notice') {
    return el('li', { class: 'notice' + (item.policy ? ' flagged' : ''), title: item.policy ? verdictText(item.policy) : null, dataset: { eventId: item.event_id } },
      item.policy ? [WARNING_SIGN, ' '] : null, item.text);
  }
  const grouped = previous && previous.kind !== 'notice' && previous.sender === item.sender && item.ts - previous.ts < 5 * 60000;
  const classes = ['message', item.own ? 'own' : 'theirs'];
  if (item.encrypted) classes.push('encrypted');
  if (item.kind === 'undecryptable') classes.push('undecryptable');
  if (grouped) classes.push('grouped');
  let body = item.kind === 'undecryptable'
    ? el('div', { class: 'body', title: item.reason || '' }, lockBadge(), ' Waiting for the key to decrypt this message…')
    : el('div', { class: 'body', text: item.body });
  const verdict = item.policy;
  if (verdict && verdict.level === 'blur') {
    // Collapsed with the list's reason; one click shows it (and it stays shown).
    classes.push('policy-blur');
    if (state.revealed.has(item.event_id)) {
      classes.push('revealed');
      body = [el('div', { class: 'policy-flag', dataset: { level: 'blur' } }, WARNING_SIGN, ' ', verdictText(verdict)), body];
    } else {
      const reveal = el('button', { type: 'button', class: 'policy-reveal', text: 'Show' });
      reveal.addEventListener('click', () => {
        state.revealed.add(item.event_id);
        renderTimeline(false);
      });
      body = el('div', { class: 'policy-cover' },
        el('span', { class: 'policy-reason' }, 'Blurred: ', verdictText(verdict)),
        reveal);
    }
  } else if (verdict && verdict.level === 'warn') {
    classes.push('policy-warn');
    body = [el('div', { class: 'policy-flag', dataset: { level: 'warn' } }, WARNING_SIGN, ' ', verdictText(verdict)), body];
  }
  const foot = el('div', { class: 'foot' });
  if (item.encrypted) foot.append(lockBadge());
  foot.append(el('time', { datetime: new Date(item.ts).toISOString(), title: new Date(item.ts).toLocaleString(), text: timeOf(item.ts) }));
  if (item.own) {
    const d = deliveryOf(item);
    foot.append(el('span', {
      class: 'delivery',
      title: d.title,
      dataset: { state: d.state, sentTo: d.sentTo === undefined ? '' : String(d.sentTo), of: d.of === undefined ? '' : String(d.of) },
    }, d.state === 'sent' ? svg(CHECK, { stroke: true }) : d.state === 'sending' ? svg(CLOCK, { stroke: true }) : null, d.text));
  }
  return el('li', { class: classes.join(' '), dataset: { eventId: item.event_id, sender: item.sender } },
    el('div', { class: 'bubble' },
      !item.own && !grouped ? el('div', { class: 'sender', text: item.sender_name || nameOf(item.sender) }) : null,
      body,
      foot));
}

function renderTimeline(toBottom) {
  const list = $('timeline');
  const timeline = state.timelines.get(state.current);
  const nearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  list.textContent = '';
  if (!timeline) return;
  let previous = null;
  let day = null;
  for (const id of timeline.order) {
    const item = timeline.items.get(id);
    if (!item) continue;
    const itemDay = dayOf(item.ts);
    if (itemDay !== day) {
      list.append(el('li', { class: 'day', text: itemDay }));
      day = itemDay;
      previous = null;
    }
    list.append(renderItem(item, previous));
    previous = item;
  }
  if (!timeline.loaded && timeline.order.length === 0) list.append(el('li', { class: 'notice', text: 'Loading…' }));
  if (toBottom || nearBottom) list.scrollTop = list.scrollHeight;
}

function renderSettings() {
  if (!state.me) return;
  const input = $('display-name');
  if (document.activeElement !== input) input.value = state.me.display_name || '';
  $('my-user-id').textContent = state.me.user_id;
  $('my-server-name').textContent = state.me.server_name;
  $('my-peer-id').textContent = state.me.peer_id || 'no peer-to-peer network';
  $('my-device-id').textContent = state.me.device_id;
  $('policy-create-server').textContent = shortServer(state.me.server_name);
  $('password-user-id').textContent = state.me.user_id;
  $('password-homeserver').textContent = location.origin;
  $('password-state').textContent = state.me.has_password
    ? 'A password is set; a new one replaces it.'
    : 'No password is set yet, so nobody can log in as you from elsewhere.';
  $('password-save').textContent = state.me.has_password ? 'Change password' : 'Set password';
  renderKnownPeers();
}

async function setPassword() {
  const status = $('password-status');
  const password = $('new-password').value;
  if (password !== $('new-password-again').value) {
    status.textContent = 'The two passwords differ.';
    status.dataset.state = 'failed';
    return;
  }
  status.textContent = 'Saving…';
  status.dataset.state = '';
  try {
    await api('POST', '/me/password', { password });
    // Not kept on the page once set.
    $('new-password').value = '';
    $('new-password-again').value = '';
    await refreshMe();
    renderSettings();
    status.textContent = 'Saved';
    status.dataset.state = 'saved';
  } catch (err) {
    status.textContent = 'Not saved: ' + err.message;
    status.dataset.state = 'failed';
  }
}

function renderBackup() {
  const backup = state.backup;
  if (!backup) return;
  const status = $('backup-status');
  $('backup-details').hidden = !backup.subscribed;
  $('backup-form').hidden = backup.subscribed;
  if (backup.subscribed) {
    let text = `Backed up to ${shortServer(backup.server)}: ${formatBytes(backup.bytes_kept)} kept, ${backup.pending} waiting`;
    if (backup.events_refused) text += `, ${backup.events_refused} refused`;
    status.textContent = text;
    status.title = backup.server;
    status.dataset.state = backup.last_error ? 'problem' : 'subscribed';
    status.dataset.server = backup.server;
    $('backup-server').textContent = backup.server;
    $('backup-addresses').textContent = backup.addresses.length
      ? backup.addresses.join('\n')
      : 'found on the network by its peer id';
    const problem = $('backup-problem');
    problem.hidden = !backup.last_error;
    problem.textContent = backup.last_error ? 'The server refused some messages: ' + backup.last_error : '';
  } else {
    status.textContent = backup.p2p
      ? 'Not backed up: your chats are on this device only.'
      : 'Not backed up. This device runs without the peer-to-peer network, so it cannot reach a backup server.';
    status.removeAttribute('title');
    status.dataset.state = 'unsubscribed';
    delete status.dataset.server;
    // Never changes while the page is open; enabling here would undo a pending submit's.
    if (!backup.p2p) for (const field of $('backup-form').elements) field.disabled = true;
  }

  const keys = backup.key_backup;
  const keyStatus = $('key-backup-status');
  keyStatus.dataset.state = keys.enabled ? 'on' : 'off';
  if (keys.enabled) {
    let text = `Key backup is on (version ${keys.version}): ${plural(keys.keys_backed_up, 'room key', 'room keys')} backed up`;
    if (keys.keys_pending) text += `, ${keys.keys_pending} waiting`;
    keyStatus.textContent = text + '.';
  } else {
    keyStatus.textContent = 'Key backup is off. Turn it on to get a recovery key: with it, a new device can read your encrypted messages'
      + (backup.subscribed ? ' and take over this device from the backup server.' : '.');
  }
  $('key-backup-on').hidden = keys.enabled;
  $('key-backup-new').hidden = !keys.enabled;
}

async function subscribeBackup() {
  const result = $('backup-form-status');
  const button = $('backup-subscribe');
  button.disabled = true;
  result.textContent = 'Subscribing…';
  result.dataset.state = 'busy';
  delete result.dataset.errcode;
  try {
    const backup = await api('POST', '/backup/subscribe', {
      address: $('backup-address').value,
      token: $('backup-token').value,
    });
    $('backup-form').reset();
    result.textContent = '';
    result.dataset.state = 'done';
    backupChanged(backup);
  } catch (e) {
    result.textContent = 'Not subscribed: ' + e.message;
    result.dataset.state = 'failed';
    if (e.errcode) result.dataset.errcode = e.errcode;
  } finally {
    button.disabled = false;
  }
}

async function unsubscribeBackup() {
  const server = state.backup && state.backup.server;
  if (!confirm(`Unsubscribe from ${server ? shortServer(server) : 'the backup server'}?\n\nThe server deletes the copy it keeps of your chats and identity. This device keeps its own.`)) return;
  const button = $('backup-unsubscribe');
  const result = $('backup-unsubscribe-status');
  button.disabled = true;
  result.textContent = 'Unsubscribing…';
  result.dataset.state = 'busy';
  try {
    backupChanged(await api('POST', '/backup/unsubscribe'));
    result.textContent = '';
    result.dataset.state = 'done';
  } catch (e) {
    result.textContent = 'Still backed up: ' + e.message;
    result.dataset.state = 'failed';
  } finally {
    button.disabled = false;
  }
}

async function turnOnKeyBackup(replace) {
  if (replace && !confirm('Make a new recovery key?\n\nThe key you wrote down before stops working.')) return;
  const error = $('key-backup-error');
  error.textContent = '';
  for (const id of ['key-backup-on', 'key-backup-new']) $(id).disabled = true;
  try {
    const shown = await api('POST', '/backup/keys', replace ? { replace: true } : {});
    $('recovery-key').textContent = shown.recovery_key;
    $('recovery-key-box').hidden = false;
    $('recovery-key-box').scrollIntoView({ block: 'nearest' });
    await refreshBackup();
  } catch (e) {
    error.textContent = 'Key backup: ' + e.message;
  } finally {
    for (const id of ['key-backup-on', 'key-backup-new']) $(id).disabled = false;
  }
}

// --- moderation: policy lists --------------------------------------------------------------

const WARNING_SIGN = '\u26a0';
const LEVEL_NAMES = { hide: 'Hide', blur: 'Blur', warn: 'Warn' };

function isPolicyList(roomId) {
  return state.rooms.some((r) => r.room_id === roomId && r.policy_list);
}

// A list as people know it: its name, else its alias, else its room id.
function listName(roomId) {
  const policy = state.policy;
  const known = policy && [...policy.subscriptions, ...policy.lists].find((l) => l.room_id === roomId);
  if (known) return known.name || known.alias || roomId;
  const room = state.rooms.find((r) => r.room_id === roomId);
  return (room && room.name) || roomId;
}

// Why an item or invite is blurred or flagged: the list's reason, and which list says so.
function verdictText(verdict) {
  const why = verdict.reason ? verdict.reason : `${verdict.kind} ${verdict.entity} is banned`;
  return `${why} (list: ${listName(verdict.list)})`;
}

let policySeq = 0;
async function refreshPolicy() {
  const seq = ++policySeq;
  try {
    const policy = await api('GET', '/policy');
    if (seq === policySeq) {
      state.policy = policy;
      renderPolicy();
    }
  } catch (e) {
    if (seq !== policySeq) return;
    const status = $('policy-status');
    status.textContent = 'Could not read your policy lists: ' + e.message;
    status.dataset.state = 'failed';
  }
}

// What lists apply changed: every timeline is read again (what a list now hides goes, what it
// hid comes back), and so are the invites and the rooms (a new list is no chat).
async function policyApplied(policy) {
  policySeq += 1;
  state.policy = policy;
  renderPolicy();
  for (const roomId of [...state.timelines.keys()]) state.timelines.delete(roomId);
  const reloads = [refreshInvites(), refreshRooms()];
  const roomId = state.current;
  if (roomId) {
    reloads.push(loadTimeline(roomId).then(() => { if (state.current === roomId) renderTimeline(false); }, () => {}));
  }
  await Promise.allSettled(reloads);
}

function levelSelect(value, label) {
  const select = el('select', { class: 'policy-level', 'aria-label': label });
  for (const [level, name] of Object.entries(LEVEL_NAMES)) {
    select.append(el('option', { value: level, selected: level === value, text: name }));
  }
  return select;
}

// Runs a change with `button` disabled, saying in `status` how it went.
async function policyAction(button, status, work) {
  if (button) button.disabled = true;
  status.textContent = 'Working…';
  status.dataset.state = 'busy';
  delete status.dataset.errcode;
  try {
    await work();
    status.textContent = '';
    status.dataset.state = 'done';
    return true;
  } catch (e) {
    status.textContent = e.message;
    status.dataset.state = 'failed';
    if (e.errcode) status.dataset.errcode = e.errcode;
    return false;
  } finally {
    if (button) button.disabled = false;
  }
}

function renderPolicy() {
  const policy = state.policy;
  if (!policy) return;
  const status = $('policy-status');
  status.dataset.state = 'ready';
  status.textContent = policy.subscriptions.length
    ? `You subscribe to ${plural(policy.subscriptions.length, 'list', 'lists')}:`
    : 'You subscribe to no list: nothing is hidden, blurred or flagged.';

  const subs = $('policy-subscriptions');
  subs.textContent = '';
  for (const sub of policy.subscriptions) {
    const select = levelSelect(sub.level, `What to do with what ${sub.name || sub.room_id} bans`);
    const unsubscribe = el('button', { type: 'button', class: 'text-button danger policy-unsubscribe', text: 'Unsubscribe' });
    const result = el('span', { class: 'sub wrap policy-result', role: 'status' });
    const path = '/policy/subscriptions/' + encodeURIComponent(sub.room_id);
    select.addEventListener('change', () => policyAction(select, result, async () => {
      await policyApplied(await api('PUT', path, { level: select.value }));
    }));
    unsubscribe.addEventListener('click', () => policyAction(unsubscribe, result, async () => {
      await policyApplied(await api('DELETE', path));
    }));
    let about = plural(sub.rules, 'rule', 'rules');
    if (sub.refused) about += `, ${sub.refused} too broad to apply`;
    if (sub.mine) about += ' · your list';
    subs.append(el('li', { class: 'policy-subscription', dataset: { roomId: sub.room_id, level: sub.level } },
      el('div', { class: 'who' },
        el('strong', { text: sub.name || sub.alias || sub.room_id }),
        el('code', { class: 'sub wrap', text: sub.alias || sub.room_id }),
        el('span', { class: 'sub', text: about })),
      el('div', { class: 'row' }, select, unsubscribe),
      result));
  }

  const lists = $('policy-lists');
  lists.textContent = '';
  $('no-policy-lists').hidden = policy.lists.length > 0;
  for (const list of policy.lists) lists.append(renderPolicyList(list));
}

// One of the owner's lists: its rules with remove buttons, a form to add one, and sharing.
function renderPolicyList(list) {
  const base = '/policy/lists/' + encodeURIComponent(list.room_id);
  const result = el('span', { class: 'sub wrap policy-result', role: 'status' });
  const replace = (view) => {
    const index = state.policy.lists.findIndex((l) => l.room_id === view.room_id);
    if (index >= 0) state.policy.lists[index] = view;
    const old = document.querySelector(`.policy-list[data-room-id="${CSS.escape(view.room_id)}"]`);
    if (old) old.replaceWith(renderPolicyList(view));
  };

  const rules = el('ul', { class: 'list policy-rules' });
  for (const rule of list.rules) {
    const remove = el('button', { type: 'button', class: 'text-button danger policy-remove', text: 'Remove', title: `Remove the ban of ${rule.entity}` });
    remove.addEventListener('click', () => policyAction(remove, result, async () => {
      const view = await api('POST', base + '/rules/remove', { kind: rule.kind, entity: rule.entity });
      if (list.subscribed) await policyApplied(await api('GET', '/policy'));
      else replace(view);
    }));
    rules.append(el('li', { class: 'policy-rule', dataset: { kind: rule.kind, entity: rule.entity } },
      el('span', { class: 'policy-kind', text: rule.kind }),
      el('div', { class: 'who' },
        el('code', { class: 'wrap', text: rule.entity }),
        el('span', { class: 'sub wrap', text: rule.reason || 'no reason given' })),
      remove));
  }
  if (!list.rules.length) rules.append(el('li', { class: 'empty', text: 'No rules yet.' }));

  const kind = el('select', { name: 'kind', 'aria-label': 'What the rule bans' },
    el('option', { value: 'user', text: 'User' }),
    el('option', { value: 'room', text: 'Room' }),
    el('option', { value: 'server', text: 'Server' }));
  const entity = el('input', { name: 'entity', required: true, maxlength: '512', autocomplete: 'off', spellcheck: 'false', placeholder: '@spammer:server or @spam*:*', 'aria-label': 'Who or what (* and ? match any characters)' });
  const reason = el('input', { name: 'reason', maxlength: '1024', autocomplete: 'off', placeholder: 'Reason (shown to subscribers)', 'aria-label': 'Reason' });
  const add = el('button', { type: 'submit', class: 'primary', text: 'Ban' });
  const addForm = el('form', { class: 'form policy-add-rule' },
    el('div', { class: 'row' }, kind, entity), reason, el('div', { class: 'row' }, add));
  addForm.addEventListener('submit', (e) => {
    e.preventDefault();
    policyAction(add, result, async () => {
      const view = await api('POST', base + '/rules', { kind: kind.value, entity: entity.value, reason: reason.value });
      if (list.subscribed) await policyApplied(await api('GET', '/policy'));
      else replace(view);
    });
  });

  const user = el('input', { name: 'user', required: true, autocomplete: 'off', spellcheck: 'false', list: 'people-ids', placeholder: '@name:server', 'aria-label': 'User id to share the list with' });
  const invite = el('button', { type: 'submit', text: 'Invite' });
  const inviteForm = el('form', { class: 'inline-form policy-invite' }, user, invite);
  inviteForm.addEventListener('submit', (e) => {
    e.preventDefault();
    policyAction(invite, result, async () => {
      await api('POST', base + '/invite', { user_id: user.value });
      user.value = '';
    }).then((done) => {
      if (done) {
        result.textContent = 'Invited.';
        result.dataset.state = 'invited';
      }
    });
  });

  // The owner's own list applies to their own chats only once subscribed, like anyone's.
  let apply;
  if (list.subscribed) {
    apply = el('p', { class: 'sub', text: `You subscribe to it: ${LEVEL_NAMES[list.subscribed]}.` });
  } else {
    const level = levelSelect('blur', 'What to do with what this list bans');
    const subscribe = el('button', { type: 'button', class: 'policy-apply', text: 'Subscribe' });
    subscribe.addEventListener('click', () => policyAction(subscribe, result, async () => {
      await policyApplied(await api('POST', '/policy/subscriptions', { list: list.room_id, level: level.value }));
    }));
    apply = el('div', { class: 'row' }, el('span', { class: 'sub', text: 'Apply it to your chats:' }), level, subscribe);
  }

  const idCode = el('code', { text: list.alias || list.room_id });
  const copy = el('button', { type: 'button', class: 'copy', text: 'Copy' });
  copy.addEventListener('click', () => copyText(idCode.textContent, copy));
  return el('div', { class: 'policy-list card-part', dataset: { roomId: list.room_id } },
    el('h3', { text: list.name || list.alias || 'Unnamed list' }),
    el('div', { class: 'copy-row' }, el('span', { class: 'label', text: list.alias ? 'Share by' : 'Room id' }), idCode, copy),
    rules,
    list.refused ? el('p', { class: 'sub wrap problem', text: `${plural(list.refused, 'rule is', 'rules are')} too broad: subscribers ignore them.` }) : null,
    addForm,
    el('div', { class: 'policy-share' }, el('span', { class: 'sub', text: 'Share it with someone:' }), inviteForm),
    apply,
    result);
}

async function subscribePolicy() {
  const button = $('policy-subscribe-button');
  const status = $('policy-subscribe-status');
  const via = $('policy-subscribe-via').value.split(/[\s,]+/).filter((v) => v);
  const done = await policyAction(button, status, async () => {
    await policyApplied(await api('POST', '/policy/subscriptions', {
      list: $('policy-subscribe-list').value,
      level: $('policy-subscribe-level').value,
      via,
    }));
  });
  if (done) $('policy-subscribe').reset();
}

async function createPolicyList() {
  const button = $('policy-create-button');
  const status = $('policy-create-status');
  const done = await policyAction(button, status, async () => {
    await api('POST', '/policy/lists', {
      name: $('policy-create-name').value,
      alias: $('policy-create-alias').value || null,
    });
    await Promise.allSettled([refreshPolicy(), refreshRooms()]);
  });
  if (done) $('policy-create').reset();
}

function renderKnownPeers() {
  const list = $('known-peers');
  list.textContent = '';
  $('no-known-peers').hidden = state.nearby.length > 0;
  const peers = [...state.nearby].sort((a, b) => Number(b.connected) - Number(a.connected));
  for (const peer of peers) {
    list.append(el('li', { class: 'peer', dataset: { serverName: peer.server_name } },
      el('span', { class: 'dot ' + (peer.connected ? 'online' : 'offline'), title: peer.connected ? 'connected' : 'not connected' }),
      el('div', { class: 'who' },
        el('strong', { text: peerName(peer) }),
        el('code', { class: 'sub wrap', text: peer.user_id || peer.server_name }),
        el('span', { class: 'sub', text: (peer.connected ? 'connected' : 'seen before') + ' · peer ' + peer.peer_id.slice(-8) }))));
  }
}

// --- actions ------------------------------------------------------------------------------

async function sendMessage(text) {
  const roomId = state.current;
  const timeline = timelineOf(roomId);
  const room = state.rooms.find((r) => r.room_id === roomId);
  const pending = {
    room_id: roomId,
    event_id: `pending-${++pendingSeq}`,
    sender: state.me ? state.me.user_id : '',
    ts: Date.now(),
    kind: 'text',
    body: text,
    encrypted: !!(room && room.encrypted),
    own: true,
    pending: true,
  };
  upsert(timeline, pending);
  renderTimeline(true);
  try {
    const { event_id: eventId } = await api('POST', `/rooms/${encodeURIComponent(roomId)}/messages`, { text });
    if (timeline.items.has(eventId)) {
      // The real item came first, live.
      timeline.items.delete(pending.event_id);
      timeline.order = timeline.order.filter((id) => id !== pending.event_id);
    } else {
      // Stands in until the item arrives: same id, so deliveries already apply.
      timeline.items.delete(pending.event_id);
      timeline.order = timeline.order.map((id) => (id === pending.event_id ? eventId : id));
      timeline.items.set(eventId, { ...pending, event_id: eventId, pending: false });
    }
  } catch (e) {
    pending.failed = e.message;
    toast('Not sent: ' + e.message);
  }
  if (state.current === roomId) renderTimeline(false);
}

function wire() {
  window.addEventListener('hashchange', route);
  for (const back of document.querySelectorAll('[data-back]')) {
    back.addEventListener('click', () => { location.hash = '#/'; });
  }
  $('open-settings').addEventListener('click', () => { location.hash = '#/settings'; });

  const text = $('composer-text');
  const grow = () => {
    text.style.height = 'auto';
    // scrollHeight leaves out the borders, which the border-box height includes.
    const border = text.offsetHeight - text.clientHeight;
    const height = Math.min(text.scrollHeight + border, 160);
    text.style.height = height + 'px';
    text.style.overflowY = height >= 160 ? 'auto' : 'hidden';
  };
  text.addEventListener('input', grow);
  text.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $('composer').requestSubmit();
    }
  });
  $('composer').addEventListener('submit', (e) => {
    e.preventDefault();
    const message = text.value;
    if (!message.trim() || !state.current) return;
    text.value = '';
    grow();
    sendMessage(message);
  });

  $('name-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const status = $('name-status');
    status.textContent = 'Saving…';
    try {
      await api('PUT', '/me/display_name', { display_name: $('display-name').value });
      await refreshMe();
      status.textContent = 'Saved';
      status.dataset.state = 'saved';
    } catch (err) {
      status.textContent = 'Not saved: ' + err.message;
      status.dataset.state = 'failed';
    }
  });
  $('password-form').addEventListener('submit', (e) => {
    e.preventDefault();
    setPassword();
  });
  $('backup-form').addEventListener('submit', (e) => {
    e.preventDefault();
    subscribeBackup();
  });
  $('backup-unsubscribe').addEventListener('click', unsubscribeBackup);
  $('policy-subscribe').addEventListener('submit', (e) => {
    e.preventDefault();
    subscribePolicy();
  });
  $('policy-create').addEventListener('submit', (e) => {
    e.preventDefault();
    createPolicyList();
  });
  $('key-backup-on').addEventListener('click', () => turnOnKeyBackup(false));
  $('key-backup-new').addEventListener('click', () => turnOnKeyBackup(true));
  $('recovery-key-done').addEventListener('click', () => {
    if (!confirm('Have you written the recovery key down? It is not shown again.')) return;
    // Gone from the page, too: nothing left for someone looking over a shoulder later.
    $('recovery-key').textContent = '';
    $('recovery-key-box').hidden = true;
  });
  for (const button of document.querySelectorAll('button[data-copy]')) {
    button.addEventListener('click', () => copyText($(button.dataset.copy).textContent, button));
  }

  $('new-group-button').addEventListener('click', () => {
    const form = $('new-group');
    form.hidden = !form.hidden;
    renderGroupPeople();
    if (!form.hidden) $('group-name').focus();
  });
  $('cancel-group').addEventListener('click', () => { $('new-group').hidden = true; });
  $('new-group').addEventListener('submit', async (e) => {
    e.preventDefault();
    const invite = [...$('group-people').querySelectorAll('input:checked')].map((i) => i.value);
    for (const line of $('group-others').value.split(/[\s,]+/)) if (line.trim()) invite.push(line.trim());
    try {
      const { room_id: roomId } = await api('POST', '/groups', { name: $('group-name').value, invite });
      $('new-group').reset();
      $('new-group').hidden = true;
      await refreshRooms();
      goRoom(roomId);
    } catch (err) {
      toast('Could not create the group: ' + err.message);
    }
  });

  $('dm-by-id').addEventListener('submit', async (e) => {
    e.preventDefault();
    const userId = $('dm-user').value.trim();
    if (!userId) return;
    try {
      const { room_id: roomId } = await api('POST', '/dm', { user_id: userId });
      $('dm-user').value = '';
      await refreshRooms();
      goRoom(roomId);
    } catch (err) {
      toast('Could not start the chat: ' + err.message);
    }
  });

  $('room-invite-button').addEventListener('click', () => {
    $('room-invite').hidden = !$('room-invite').hidden;
    if (!$('room-invite').hidden) $('room-invite-user').focus();
  });
  $('room-invite').addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      await api('POST', `/rooms/${encodeURIComponent(state.current)}/invite`, { user_id: $('room-invite-user').value });
      $('room-invite-user').value = '';
      $('room-invite').hidden = true;
      refreshRoomsSoon();
    } catch (err) {
      toast('Could not invite: ' + err.message);
    }
  });
  $('room-leave').addEventListener('click', async () => {
    const room = state.rooms.find((r) => r.room_id === state.current);
    if (!confirm(`Leave ${room ? roomTitle(room) : 'this chat'}?`)) return;
    try {
      await api('POST', `/rooms/${encodeURIComponent(state.current)}/leave`);
      state.timelines.delete(state.current);
      location.hash = '#/';
      await refreshRooms();
    } catch (err) {
      toast('Could not leave: ' + err.message);
    }
  });

  // Nearby devices come and go without an event: look again now and then, while visible.
  setInterval(() => { if (!document.hidden) refreshNearby(); }, NEARBY_EVERY_MS);
  setInterval(() => {
    if (!document.hidden && document.body.dataset.view === 'settings') refreshBackup();
  }, BACKUP_EVERY_MS);
  document.addEventListener('visibilitychange', () => { if (!document.hidden) refreshNearby(); });
}

async function start() {
  wire();
  try {
    await refreshMe();
  } catch (e) {
    toast('Could not reach this device\'s node: ' + e.message);
  }
  connect();
  await Promise.allSettled([refreshRooms(), refreshInvites(), refreshNearby()]);
  route();
  document.body.dataset.ready = 'true';
}

start();
