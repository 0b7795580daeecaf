// The Isthmus dashboard: polls this admin port's read-only state document and draws it.
// No framework, no build step, nothing fetched from anywhere else. Text from the document is
// only ever set through textContent (never parsed as HTML).
'use strict';

const STATE = '/ui/api/state';
const REFRESH_MS = 2000;
const SVG = 'http://www.w3.org/2000/svg';

let loads = 0;

function $(id) {
  return document.getElementById(id);
}

// An element with attributes (data-* and class included) and children (nodes or text).
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

function ago(ms) {
  if (ms === null || ms === undefined || ms < 0) return 'never';
  if (ms < 1000) return 'now';
  const s = Math.round(ms / 1000);
  if (s < 120) return s + ' s ago';
  const m = Math.round(s / 60);
  return m < 120 ? m + ' min ago' : Math.round(m / 60) + ' h ago';
}

function ms(v) {
  if (v === null || v === undefined) return '–';
  return v < 10 ? v.toFixed(1) + ' ms' : Math.round(v) + ' ms';
}

function rate(v) {
  return v < 10 ? v.toFixed(2) : v.toFixed(1);
}

function percent(v) {
  return (v * 100).toFixed(v > 0 && v < 0.01 ? 2 : 1) + ' %';
}

function replace(id, rows) {
  $(id).replaceChildren(...rows);
}

function renderHeader(s) {
  $('cluster').textContent = s.cluster;
  $('place').textContent = s.region + ' · ' + s.trust_domain;
  $('updated').textContent = 'updated ' + new Date(s.generated_at_ms).toLocaleTimeString();
  const ca = s.ca || {};
  $('ca').textContent = ca.rotation === undefined ? 'CA: busy, shown next refresh'
    : 'CA: rotation ' + ca.rotation + ' · bundle sequence ' + ca.bundle_sequence + ' · ' +
      ca.roots + ' root(s) · leaf lifetime ' + ca.leaf_lifetime;
  document.body.dataset.cluster = s.cluster;
}

function renderClusters(s) {
  replace('clusters', s.clusters.map((c) => {
    const link = c.self ? 'this cluster' : c.link;
    const linkClass = c.self ? 'self' : (c.link === 'connected' ? 'ok' : 'bad');
    const bundle = c.bundle_sequence === null || c.bundle_sequence === undefined ? '–'
      : 'seq ' + c.bundle_sequence + (c.bundle_roots > 1 ? ' (' + c.bundle_roots + ' roots)' : '') +
        (c.self ? '' : ' · acked ours: ' + c.acked_our_bundle_sequence);
    return el('tr', { class: 'cluster', 'data-cluster': c.name, 'data-link': c.self ? 'self' : c.link },
      el('td', {}, el('strong', {}, c.name)),
      el('td', {}, c.region + (c.zone ? ' / ' + c.zone : '')),
      el('td', {}, el('span', { class: 'pill ' + linkClass, 'data-link': c.link }, link)),
      el('td', {}, c.self ? '–' : String(c.sync_lag)),
      el('td', {}, c.self ? '–' : ago(c.last_seen_ms_ago)),
      el('td', {}, c.self ? '' : String(c.services)),
      el('td', {}, c.gateways === null || c.gateways === undefined ? '–' : String(c.gateways)),
      el('td', {}, bundle),
      el('td', { class: c.last_error ? 'bad' : '' }, c.last_error || ''));
  }));
  replace('gateways', s.gateways.map((g) => el('tr', { class: 'gateway', 'data-gateway': g.name },
    el('td', {}, g.name),
    el('td', {}, g.address || 'not registered'),
    el('td', {}, 'v' + g.acked_version),
    el('td', { class: g.unhealthy_verdicts ? 'bad' : '' }, String(g.unhealthy_verdicts)),
    el('td', {}, ago(g.last_traffic_report_ms_ago)))));
}

function verdictTag(c) {
  if (!c.verdicts.length) return el('span', { class: 'muted' }, 'no verdict');
  return c.verdicts.map((v) => el('span', {
    class: 'verdict ' + (v.healthy ? 'ok' : 'bad'),
    'data-cluster': c.cluster,
    'data-gateway': v.gateway,
    'data-healthy': v.healthy,
    title: v.gateway,
  }, (v.healthy ? 'up' : 'down') + (v.reason ? ': ' + v.reason : '')));
}

function renderServices(s) {
  $('services-count').textContent = '(' + s.services.length +
    (s.services_total > s.services.length ? ' of ' + s.services_total : '') + ')';
  replace('service-rows', s.services.map((svc) => {
    const here = [svc.exported ? 'exported' : null, svc.imported ? 'imported' : null]
      .filter(Boolean).join(', ');
    const serving = svc.clusters.map((c) => el('div', {
      class: 'serving' + (c.stale ? ' stale' : '') + (c.conflict ? ' conflict' : ''),
      'data-cluster': c.cluster,
    },
    el('strong', {}, c.cluster), ' ',
    el('span', { class: 'muted' }, c.healthy_endpoints + ' healthy' + (c.local ? ', local' : '') +
      (c.stale ? ', stale' : '') + (c.conflict ? ', conflict' : '')), ' ',
    verdictTag(c)));
    return el('tr', {
      class: 'service',
      'data-service': svc.service,
      'data-serving': svc.clusters.map((c) => c.cluster).join(','),
    },
    el('td', {}, el('strong', {}, svc.service)),
    el('td', {}, svc.vip || '–'),
    el('td', {}, here),
    el('td', {}, serving),
    el('td', {}, svc.policies.join(', ')));
  }));
}

function renderPolicies(s) {
  if (!s.policies.length) {
    replace('policy-rows', [el('tr', {}, el('td', { colspan: 4, class: 'muted' }, 'no policy documents in the catalog'))]);
    return;
  }
  replace('policy-rows', s.policies.map((p) => {
    let drill = '';
    if (p.error) drill = 'invalid: ' + p.error;
    else if (p.fault) {
      drill = p.fault.active ? 'active, ' + p.fault.expires_in_s + ' s left' : 'expired';
      if (p.fault.abort) drill += ' · abort ' + p.fault.abort.percent + ' % with ' + p.fault.abort.status;
      if (p.fault.delay) drill += ' · delay ' + p.fault.delay.percent + ' % by ' + p.fault.delay.duration_ms + ' ms';
    }
    return el('tr', { class: 'policy', 'data-policy': p.name, 'data-drill-active': p.fault ? p.fault.active : '' },
      el('td', {}, p.name),
      el('td', {}, (p.services || []).join(', ')),
      el('td', {}, (p.sections || []).join(', ')),
      el('td', { class: p.fault && p.fault.active ? 'warn' : '' }, drill));
  }));
}

function sparkline(series) {
  const w = 150;
  const h = 24;
  const max = Math.max(1e-9, ...series);
  const step = series.length > 1 ? w / (series.length - 1) : w;
  const points = series.map((v, i) => (i * step).toFixed(1) + ',' + (h - (v / max) * (h - 2) - 1).toFixed(1));
  const s = svg('svg', { width: w, height: h, class: 'spark' });
  s.append(svg('polyline', { points: points.join(' '), fill: 'none', stroke: 'currentColor' }));
  return s;
}

function edgeColor(e) {
  if (e.requests === 0) return '#9aa5b1';
  if (e.error_ratio >= 0.05) return '#d64545';
  if (e.error_ratio > 0) return '#e0a800';
  return '#2f9e44';
}

// Clusters on a circle, one arrow per edge (curved, so both directions of a pair show).
function renderGraph(s) {
  const width = 640;
  const height = 360;
  const r = 24;
  const names = s.clusters.map((c) => c.name);
  const pos = {};
  names.forEach((n, i) => {
    const a = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(1, names.length);
    pos[n] = { x: width / 2 + 130 * Math.cos(a) * 1.6, y: height / 2 + 130 * Math.sin(a) };
  });
  const g = svg('svg', { viewBox: '0 0 ' + width + ' ' + height, class: 'graph', role: 'img' });
  for (const e of s.traffic.edges) {
    const a = pos[e.from];
    const b = pos[e.to];
    if (!a || !b || e.from === e.to) continue;
    const dx = b.x - a.x;
    const dy = b.y - a.y;
    const len = Math.hypot(dx, dy) || 1;
    const [ux, uy] = [dx / len, dy / len];
    const [nx, ny] = [-uy, ux];
    const bend = 28;
    const start = { x: a.x + ux * r + nx * 6, y: a.y + uy * r + ny * 6 };
    const end = { x: b.x - ux * (r + 4) + nx * 6, y: b.y - uy * (r + 4) + ny * 6 };
    const ctl = { x: (a.x + b.x) / 2 + nx * bend, y: (a.y + b.y) / 2 + ny * bend };
    const color = edgeColor(e);
    const widthPx = Math.min(8, 1.5 + Math.log10(1 + e.requests_per_s) * 2);
    g.append(svg('path', {
      d: 'M' + start.x + ',' + start.y + ' Q' + ctl.x + ',' + ctl.y + ' ' + end.x + ',' + end.y,
      fill: 'none', stroke: color, 'stroke-width': widthPx.toFixed(1),
      class: 'edge', 'data-from': e.from, 'data-to': e.to, 'data-rps': e.requests_per_s.toFixed(3),
    }));
    // The arrowhead points along the curve's last segment (control point -> end).
    const hx = end.x - ctl.x;
    const hy = end.y - ctl.y;
    const hl = Math.hypot(hx, hy) || 1;
    const [tx, ty] = [hx / hl, hy / hl];
    const tip = { x: end.x + tx * 4, y: end.y + ty * 4 };
    const base = { x: tip.x - tx * 12, y: tip.y - ty * 12 };
    g.append(svg('polygon', {
      points: [tip.x, tip.y, base.x - ty * 6, base.y + tx * 6, base.x + ty * 6, base.y - tx * 6]
        .map((v) => v.toFixed(1)).join(' '),
      fill: color,
    }));
    const label = svg('text', { x: ctl.x.toFixed(1), y: ctl.y.toFixed(1), class: 'edge-label', 'text-anchor': 'middle' });
    label.textContent = rate(e.requests_per_s) + ' req/s · ' + percent(e.error_ratio) + ' err · p99 ' + ms(e.p99_ms);
    g.append(label);
  }
  for (const c of s.clusters) {
    const p = pos[c.name];
    const state = c.self ? 'self' : (c.link === 'connected' ? 'ok' : 'bad');
    const node = svg('g', { class: 'node ' + state, 'data-cluster': c.name, 'data-link': c.self ? 'self' : c.link });
    node.append(svg('circle', { cx: p.x.toFixed(1), cy: p.y.toFixed(1), r }));
    const t = svg('text', { x: p.x.toFixed(1), y: (p.y + r + 16).toFixed(1), 'text-anchor': 'middle' });
    t.textContent = c.name + (c.self ? '' : ' (' + c.link + ')');
    node.append(t);
    g.append(node);
  }
  $('graph').replaceChildren(g);
}

function renderTraffic(s) {
  $('traffic-scope').textContent = 'Last ' + s.traffic.window_s + ' s; ' + s.traffic.scope + '.';
  renderGraph(s);
  const edges = s.traffic.edges;
  replace('edges', edges.length ? edges.map((e) => el('tr', {
    class: 'edge', 'data-from': e.from, 'data-to': e.to, 'data-rps': e.requests_per_s.toFixed(3),
    'data-requests': e.requests, 'data-reported-by': e.reported_by,
  },
  el('td', {}, e.from), el('td', {}, e.to),
  el('td', {}, rate(e.requests_per_s)),
  el('td', { class: e.errors ? 'bad' : '' }, percent(e.error_ratio) + ' (' + e.errors + ')'),
  el('td', {}, ms(e.p50_ms)), el('td', {}, ms(e.p99_ms)),
  el('td', {}, sparkline(e.series)),
  el('td', { class: 'muted' }, e.reported_by === s.cluster ? 'this cluster' : e.reported_by))) :
    [el('tr', {}, el('td', { colspan: 8, class: 'muted' }, 'no traffic reported yet'))]);
}

function render(s) {
  renderHeader(s);
  renderClusters(s);
  renderTraffic(s);
  renderServices(s);
  renderPolicies(s);
}

async function refresh() {
  try {
    const response = await fetch(STATE, { cache: 'no-store' });
    if (!response.ok) throw new Error('HTTP ' + response.status);
    render(await response.json());
    loads += 1;
    document.body.dataset.loads = String(loads);
    $('error').textContent = '';
    delete document.body.dataset.error;
  } catch (e) {
    $('error').textContent = 'cannot read ' + STATE + ': ' + e.message + ' (retrying)';
    document.body.dataset.error = e.message;
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

refresh();
