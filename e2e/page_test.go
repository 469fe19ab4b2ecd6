package e2e

// testPage is the page every test (but the chat's) opens. It imports the
// client from the hub's mount point and keeps what each client reports in
// window.e2e, for the tests to read with Runtime.evaluate. It draws a
// table of its clients, so that a screenshot shows what happened.
//
// With ?warp in its URL it replaces the page's timers and clocks before the
// client loads, so that a test can make every timer fire "late" (see
// TestThrottledTimers): while e2e.warp.on is true, a timer asked for d ms
// runs after d*scale real ms, and when it runs, Date.now and
// performance.now jump so that d + lag ms seem to have passed.
const testPage = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>realtime e2e</title>
<link rel="icon" href="data:,">
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 16px; color: #1d2330; }
  h1 { font-size: 18px; margin: 0 0 8px; }
  table { border-collapse: collapse; }
  th, td { padding: 3px 10px; border-bottom: 1px solid #dde2ea; text-align: left; font-variant-numeric: tabular-nums; }
  td.connected { color: #137333; } td.reconnecting, td.connecting { color: #b06000; } td.closed { color: #a50e0e; }
  #err { color: #a50e0e; white-space: pre-wrap; }
</style>
<script>
(() => {
  const realPerfNow = performance.now.bind(performance);
  const e2e = window.e2e = {
    ready: false, loadError: null, pageErrors: [], clients: {}, lib: null,
    // now is wall time in ms, never warped.
    now: () => performance.timeOrigin + realPerfNow(),
  };
  addEventListener('error', (ev) => e2e.pageErrors.push(String(ev.error && ev.error.stack || ev.message)));
  addEventListener('unhandledrejection', (ev) => {
    const r = ev.reason;
    e2e.pageErrors.push('unhandled rejection: ' + (r && (r.stack || r.message || r.code) || String(r)));
  });

  if (new URLSearchParams(location.search).has('warp')) {
    const warp = e2e.warp = { on: false, lag: 0, scale: 1, offset: 0, fired: 0 };
    const realDateNow = Date.now;
    performance.now = () => realPerfNow() + warp.offset;
    Date.now = () => realDateNow() + warp.offset;
    const realSetTimeout = setTimeout, realSetInterval = setInterval;
    const late = (fn, d, real) => function (...args) {
      if (warp.on) { warp.offset += Math.max(0, d - real) + warp.lag; warp.fired++; }
      return fn.apply(this, args);
    };
    window.setTimeout = function (fn, delay, ...args) {
      if (!warp.on || typeof fn !== 'function') return realSetTimeout(fn, delay, ...args);
      const d = Math.max(0, Number(delay) || 0), real = d * warp.scale;
      return realSetTimeout(late(fn, d, real), real, ...args);
    };
    window.setInterval = function (fn, delay, ...args) {
      if (!warp.on || typeof fn !== 'function') return realSetInterval(fn, delay, ...args);
      const d = Math.max(0, Number(delay) || 0), real = Math.max(1, d * warp.scale);
      return realSetInterval(late(fn, d, real), real, ...args);
    };
  }

  // Hidden/visible, as a background tab would be: document.hidden and
  // visibilityState follow e2e.hidden once e2e.setHidden was called.
  e2e.setHidden = (hidden) => {
    if (!e2e.visibilityOverridden) {
      Object.defineProperty(document, 'hidden', { configurable: true, get: () => !!e2e.hidden });
      Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => e2e.hidden ? 'hidden' : 'visible' });
      e2e.visibilityOverridden = true;
    }
    e2e.hidden = hidden;
    document.dispatchEvent(new Event('visibilitychange'));
    return true;
  };

  const render = () => {
    if (e2e.renderQueued) return;
    e2e.renderQueued = true;
    queueMicrotask(() => {
      e2e.renderQueued = false;
      const body = document.getElementById('rows');
      if (!body) return;
      const rows = Object.values(e2e.clients).map((c) => {
        const tr = document.createElement('tr');
        const channels = Object.keys(c.msgs);
        const last = channels.map((ch) => c.msgs[ch].at(-1)).filter(Boolean).map((m) => JSON.stringify(m.data)).join(' ');
        const cells = [c.name, c.rt.state, c.rt.transport || '-', channels.join(' '),
          channels.map((ch) => c.msgs[ch].length).join(' '), c.states.filter((s) => s.state === 'reconnecting').length,
          c.resyncs.length, last.slice(0, 40)];
        cells.forEach((v, i) => {
          const td = document.createElement('td');
          td.textContent = String(v);
          if (i === 1) td.className = String(v);
          tr.append(td);
        });
        return tr;
      });
      body.replaceChildren(...rows);
      document.getElementById('err').textContent = [e2e.loadError, ...e2e.pageErrors].filter(Boolean).join('\n');
    });
  };
  e2e.render = render;

  // open connects a client called name with opts and subscribes it to
  // channels.
  e2e.open = (name, opts, channels) => {
    const c = { name, rt: null, states: [], msgs: {}, joins: {}, resyncs: [], errors: [], subErrors: [], gaps: [], unsub: {} };
    e2e.clients[name] = c;
    const rt = c.rt = e2e.lib.connect(opts);
    rt.on('state', (ev) => {
      c.states.push({ state: ev.state, transport: ev.transport ?? null, code: ev.code ?? null, reason: ev.reason ?? null,
        attempt: ev.attempt ?? null, delay: ev.delay ?? null, t: e2e.now() });
      render();
    });
    rt.on('resync', (ev) => { c.resyncs.push({ channel: ev.channel, t: e2e.now() }); render(); });
    rt.on('error', (err) => c.errors.push({ code: err && err.code, message: err && err.message, channel: err && err.channel }));
    rt.on('gap', (ev) => c.gaps.push(ev.channel));
    for (const ch of channels || []) e2e.subscribe(name, ch);
    render();
    return true;
  };

  e2e.subscribe = (name, ch) => {
    const c = e2e.clients[name];
    c.msgs[ch] = [];
    c.joins[ch] = 0;
    c.unsub[ch] = c.rt.subscribe(ch, (m) => {
      c.msgs[ch].push({ data: m.data, epoch: m.epoch, offset: m.offset, t: e2e.now() });
      render();
    }, {
      onJoined: () => { c.joins[ch]++; render(); },
      onError: (err) => c.subErrors.push({ channel: ch, code: err && err.code, message: err && err.message }),
    });
    return true;
  };

  // publish publishes data from client name and reports how it went.
  e2e.publish = async (name, ch, data) => {
    try {
      const r = await e2e.clients[name].rt.publish(ch, data);
      return { ok: true, epoch: r && r.epoch, offset: r && r.offset };
    } catch (err) {
      return { ok: false, code: err && err.code, message: String(err && err.message), channel: err && err.channel, isRealtimeError: err instanceof e2e.lib.RealtimeError };
    }
  };

  e2e.summary = (name) => {
    const c = e2e.clients[name];
    const counts = {};
    for (const ch of Object.keys(c.msgs)) counts[ch] = c.msgs[ch].length;
    return { name, state: c.rt.state, transport: c.rt.transport ?? null, id: c.rt.id ?? null, states: c.states,
      resyncs: c.resyncs, errors: c.errors, subErrors: c.subErrors, gaps: c.gaps, counts, joins: c.joins };
  };
  e2e.summaries = () => Object.keys(e2e.clients).map(e2e.summary);

  // data returns the payloads client name received on channel ch.
  e2e.data = (name, ch) => e2e.clients[name].msgs[ch].map((m) => m.data);

  e2e.dump = () => JSON.stringify({ loadError: e2e.loadError, pageErrors: e2e.pageErrors, warp: e2e.warp,
    clients: Object.keys(e2e.clients).map((n) => {
      const s = e2e.summary(n);
      s.states = s.states.slice(-12);
      return s;
    }) });

  import('/realtime/realtime.js').then((lib) => {
    e2e.lib = lib;
    if (typeof lib.connect !== 'function') throw new Error('realtime.js exports no connect');
    e2e.ready = true;
    render();
  }).catch((err) => { e2e.loadError = String(err && (err.stack || err)); render(); });
})();
</script>
</head>
<body>
<h1>realtime e2e</h1>
<table>
  <thead><tr><th>client</th><th>state</th><th>transport</th><th>channels</th><th>messages</th><th>reconnects</th><th>resyncs</th><th>last</th></tr></thead>
  <tbody id="rows"></tbody>
</table>
<p id="err"></p>
</body>
</html>
`
