// The chat page: one connection, one active room at a time.
// All user text reaches the page through textContent, never as HTML.
import { connect } from '/realtime/realtime.js';

const NAME_KEY = 'realtime-chat:name';
const ROOMS_KEY = 'realtime-chat:rooms';
const DEFAULT_ROOMS = ['lobby', 'random', 'go'];
const ROOM_RE = /^[A-Za-z0-9_-]{1,32}$/;
const MAX_TEXT = 500;
const TRANSPORTS = ['websocket', 'sse', 'longpoll'];
// ?transport=websocket|sse|longpoll in the page's URL forces one.
const forced = new URLSearchParams(location.search).get('transport');
const transport = TRANSPORTS.includes(forced) ? forced : undefined;

const $ = (id) => document.getElementById(id);
const el = {
  status: $('status'), statusText: $('status-text'), reconnect: $('reconnect'),
  me: $('me'), meName: $('me-name'), changeName: $('change-name'),
  roomList: $('room-list'), joinForm: $('join-form'), joinInput: $('join-input'),
  roomTitle: $('room-title'), roomState: $('room-state'), messages: $('messages'),
  error: $('error'), errorText: $('error-text'), errorClose: $('error-close'),
  composer: $('composer'), text: $('text'), send: $('send'),
  nameDialog: $('name-dialog'), nameForm: $('name-form'),
  nameInput: $('name-input'), nameError: $('name-error'),
};

let name = localStorage.getItem(NAME_KEY) || '';
let rooms = loadRooms();
let room = roomFromHash() || 'lobby';
let rt = null;
let leaveRoom = null;
let errorTimer = 0;
let countdown = 0;

// Connection.

function start() {
  if (rt) rt.close();
  el.meName.textContent = name;
  el.me.hidden = false;
  rt = connect({ url: '/realtime/', params: { name }, transport });
  rt.on('state', showState);
  rt.on('error', (err) => showError(err.message || err.code));
  // After a reconnect the server could not replay everything this page
  // missed (for example it restarted), and the chat keeps no history to
  // reload: say so.
  rt.on('resync', ({ channel }) => {
    if (channel === 'room:' + room) addNotice('Reconnected. Some messages may be missing.', 'warn');
  });
  rt.on('gap', ({ channel }) => {
    if (channel === 'room:' + room) addNotice('Some messages were lost on the way.', 'warn');
  });
  showState({ state: rt.state, transport: rt.transport });
  enterRoom(room);
}

function showState({ state, transport, code, reason, delay }) {
  clearInterval(countdown);
  el.status.dataset.state = state;
  el.status.title = transport ? `transport: ${transport}${forced ? ' (forced)' : ''}` : '';
  if (state === 'connected') {
    el.statusText.textContent = `connected · ${transport}`;
  } else if (state === 'reconnecting' && delay == null) {
    el.statusText.textContent = 'offline · waiting for network';
  } else if (state === 'reconnecting') {
    // Count down to the next attempt.
    const at = Date.now() + delay;
    const tick = () => {
      const left = at - Date.now();
      el.statusText.textContent = left > 50 ? `reconnecting in ${(left / 1000).toFixed(1)} s` : 'reconnecting…';
      if (left <= 50) clearInterval(countdown);
    };
    tick();
    countdown = setInterval(tick, 100);
  } else if (state === 'closed') {
    el.statusText.textContent = code === 1000 ? 'closed' : `closed · ${describeClose(code, reason)}`;
  } else {
    el.statusText.textContent = 'connecting…';
  }
  el.reconnect.hidden = state !== 'closed';
  const ready = state === 'connected';
  el.text.disabled = !ready;
  el.send.disabled = !ready;
  if (ready && !el.nameDialog.open) el.text.focus();
  if (state === 'reconnecting') el.roomState.textContent = 'reconnecting…';
  if (state === 'closed' && code !== 1000) {
    showError(`Disconnected: ${describeClose(code, reason)}.`, true);
    el.roomState.textContent = '';
  }
}

function describeClose(code, reason) {
  if (reason) return `${reason} (${code})`;
  if (code === 1006) return 'connection lost or refused';
  if (code === 1001) return 'server going away';
  if (code === 1008) return 'refused by the server';
  if (code === 4000) return 'too slow, messages lost';
  return `code ${code}`;
}

// Rooms.

function enterRoom(next) {
  if (leaveRoom) leaveRoom();
  room = next;
  if (!rooms.includes(room)) {
    rooms.push(room);
    saveRooms();
  }
  showRoom();
  el.messages.replaceChildren();
  el.roomState.textContent = 'joining…';

  const here = room;
  leaveRoom = rt.subscribe('room:' + here, onMessage, {
    onJoined: () => { el.roomState.textContent = ''; },
    onLeft: () => { el.roomState.textContent = 'removed from room'; },
    onError: (err) => {
      el.roomState.textContent = 'not joined';
      addNotice(`Could not join #${here}: ${err.message}`, 'error');
    },
  });
}

function showRoom() {
  history.replaceState(null, '', '#' + room);
  el.roomTitle.textContent = room;
  el.text.placeholder = `Message #${room}`;
  renderRooms();
}

function renderRooms() {
  const items = rooms.map((r) => {
    const li = document.createElement('li');
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'room' + (r === room ? ' active' : '');
    if (r === room) b.setAttribute('aria-current', 'page');
    const hash = document.createElement('span');
    hash.className = 'hash';
    hash.textContent = '#';
    b.append(hash, r);
    b.addEventListener('click', () => { if (r !== room) enterRoom(r); });
    li.append(b);
    return li;
  });
  el.roomList.replaceChildren(...items);
}

function loadRooms() {
  let extra = [];
  try {
    extra = JSON.parse(localStorage.getItem(ROOMS_KEY) || '[]');
  } catch { /* ignore a corrupt entry */ }
  const valid = Array.isArray(extra) ? extra.filter((r) => ROOM_RE.test(r)) : [];
  return [...new Set([...DEFAULT_ROOMS, ...valid])];
}

function saveRooms() {
  const extra = rooms.filter((r) => !DEFAULT_ROOMS.includes(r));
  localStorage.setItem(ROOMS_KEY, JSON.stringify(extra));
}

function roomFromHash() {
  const r = decodeURIComponent(location.hash.slice(1));
  return ROOM_RE.test(r) ? r : '';
}

// Messages.

function onMessage({ data }) {
  if (data instanceof Uint8Array) {
    const hex = [...data.slice(0, 16)].map((b) => b.toString(16).padStart(2, '0')).join(' ');
    addNotice(`binary message, ${data.length} bytes: ${hex}${data.length > 16 ? ' …' : ''}`);
  } else if (data && data.system === 'join' && typeof data.name === 'string') {
    addNotice(data.name === name ? 'You joined the room' : `${data.name} joined`, 'join');
  } else if (data && data.system === 'leave' && typeof data.name === 'string') {
    addNotice(`${data.name} left`, 'leave');
  } else if (data && typeof data.name === 'string' && typeof data.text === 'string') {
    addChat(data.name, data.text);
  } else {
    addNotice(`message: ${JSON.stringify(data)}`);
  }
}

function addChat(from, text) {
  const last = el.messages.lastElementChild;
  const li = document.createElement('li');
  li.className = 'msg' + (from === name ? ' mine' : '');
  li.dataset.from = from;
  // Consecutive messages from one person share one header.
  if (last && last.dataset.from === from) {
    li.classList.add('cont');
  } else {
    const avatar = document.createElement('span');
    avatar.className = 'avatar';
    avatar.textContent = [...from][0].toUpperCase();
    avatar.style.setProperty('--hue', hue(from));
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = from === name ? `${from} (you)` : from;
    const when = document.createElement('time');
    when.textContent = clock();
    const head = document.createElement('div');
    head.className = 'head';
    head.append(who, when);
    li.append(avatar, head);
  }
  const body = document.createElement('div');
  body.className = 'text';
  body.textContent = text;
  li.append(body);
  append(li);
}

function addNotice(text, kind = 'info') {
  const li = document.createElement('li');
  li.className = `notice ${kind}`;
  const span = document.createElement('span');
  span.textContent = text;
  const when = document.createElement('time');
  when.textContent = clock();
  li.append(span, when);
  append(li);
}

function append(li) {
  const list = el.messages;
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 60;
  list.append(li);
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function clock() {
  return new Date().toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

function hue(s) {
  let h = 0;
  for (const c of s) h = (h * 31 + c.codePointAt(0)) % 360;
  return String(h);
}

// Errors.

function showError(text, sticky = false) {
  el.errorText.textContent = text;
  el.error.hidden = false;
  clearTimeout(errorTimer);
  if (!sticky) errorTimer = setTimeout(hideError, 8000);
}

function hideError() {
  el.error.hidden = true;
}

// Name.

function askName() {
  el.nameInput.value = name;
  el.nameError.textContent = '';
  el.nameDialog.showModal();
  el.nameInput.select();
}

el.nameForm.addEventListener('submit', (ev) => {
  const value = el.nameInput.value.trim();
  if (value.length < 1 || [...value].length > 32) {
    ev.preventDefault();
    el.nameError.textContent = 'Use 1 to 32 characters.';
    return;
  }
  const changed = value !== name;
  name = value;
  localStorage.setItem(NAME_KEY, name);
  if (changed || !rt) start();
});

el.nameDialog.addEventListener('cancel', (ev) => {
  // Without a name there is nothing to show; keep asking.
  if (!name) ev.preventDefault();
});

// Controls.

el.composer.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const text = el.text.value.trim();
  if (!text) return;
  if ([...text].length > MAX_TEXT) {
    showError(`Messages are at most ${MAX_TEXT} characters.`);
    return;
  }
  el.text.value = '';
  try {
    await rt.publish('room:' + room, { name, text });
    hideError();
  } catch (err) {
    if (!el.text.value) el.text.value = text;
    showError(`Not sent: ${err.message || err.code}`);
  }
});

el.joinForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const r = el.joinInput.value.trim().replace(/^#/, '');
  if (!ROOM_RE.test(r)) {
    showError('Room names use letters, digits, - and _ (at most 32).');
    return;
  }
  el.joinInput.value = '';
  if (r !== room) enterRoom(r);
});

el.changeName.addEventListener('click', askName);
el.reconnect.addEventListener('click', () => { hideError(); start(); });
el.errorClose.addEventListener('click', hideError);
window.addEventListener('hashchange', () => {
  const r = roomFromHash();
  if (r && r !== room && rt) enterRoom(r);
});

showRoom();
if (name) start();
else askName();
