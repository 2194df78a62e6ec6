// The branches of one transaction as a graph: one column per depth of the dependsOn DAG, an edge
// from each dependency to its dependent, every node coloured by its state. Plain SVG, no library.

const SVG = 'http://www.w3.org/2000/svg';
const NODE_W = 170;
const NODE_H = 52;
const GAP_X = 70;
const GAP_Y = 22;
const PAD = 16;

/** The colour family of a branch state ("succeeded", "compensating", "voted-no", ...). */
export function tone(status) {
  const s = String(status || '');
  if (/^(succeeded|confirmed|committed|delivered|reported|reserved|prepared|pre-committed|voted-yes)$/.test(s)) return 'ok';
  if (/^(failed|unknown|refused|voted-no|pre-commit-refused|exhausted)$/.test(s)) return 'bad';
  if (/^(compensated|cancelled|rolled-back|rollback-sent|aborted)$/.test(s)) return 'undone';
  if (/^(compensating|cancelling|rolling-back|aborting)$/.test(s)) return 'undoing';
  if (/ing$/.test(s) || s === 'in-flight' || s === 'waiting') return 'active';
  return 'idle';
}

/** Depth of each branch: 0 without dependencies, else one more than its deepest dependency. */
export function layout(branches) {
  const index = new Map(branches.map((b, i) => [b.name, i]));
  const depth = new Array(branches.length).fill(-1);
  const visiting = new Set();
  const depthOf = (i) => {
    if (depth[i] >= 0) return depth[i];
    if (visiting.has(i)) return 0; // the server refuses cycles; never loop on one anyway.
    visiting.add(i);
    let d = 0;
    for (const dep of branches[i].dependsOn || []) {
      const j = index.get(dep);
      if (j !== undefined) d = Math.max(d, depthOf(j) + 1);
    }
    visiting.delete(i);
    depth[i] = d;
    return d;
  };
  branches.forEach((_, i) => depthOf(i));
  const columns = [];
  depth.forEach((d, i) => (columns[d] ||= []).push(i));
  const positions = new Array(branches.length);
  columns.forEach((column, d) => column.forEach((i, row) => {
    positions[i] = { x: PAD + d * (NODE_W + GAP_X), y: PAD + row * (NODE_H + GAP_Y) };
  }));
  const width = PAD * 2 + columns.length * NODE_W + Math.max(0, columns.length - 1) * GAP_X;
  const height = PAD * 2 + Math.max(0, ...columns.map((c) => c.length)) * (NODE_H + GAP_Y) - GAP_Y;
  return { positions, width, height, index };
}

function el(name, attrs = {}, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

/** An SVG element drawing the branches of <paramref name="tx"/> (a TransactionView). */
export function renderGraph(tx) {
  const branches = tx.branches || [];
  const { positions, width, height, index } = layout(branches);
  const svg = el('svg', {
    class: 'graph',
    width,
    height,
    viewBox: `0 0 ${width} ${height}`,
    role: 'img',
    'aria-label': `Branches of ${tx.gid}`,
  });
  const defs = el('defs');
  const marker = el('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' });
  marker.append(el('path', { d: 'M 0 0 L 10 5 L 0 10 z', class: 'arrow' }));
  defs.append(marker);
  svg.append(defs);

  branches.forEach((b, i) => {
    for (const dep of b.dependsOn || []) {
      const j = index.get(dep);
      if (j === undefined) continue;
      const from = positions[j];
      const to = positions[i];
      const x1 = from.x + NODE_W;
      const y1 = from.y + NODE_H / 2;
      const x2 = to.x;
      const y2 = to.y + NODE_H / 2;
      const mid = (x1 + x2) / 2;
      svg.append(el('path', {
        class: 'edge',
        d: `M ${x1} ${y1} C ${mid} ${y1}, ${mid} ${y2}, ${x2} ${y2}`,
        'marker-end': 'url(#arrow)',
        'data-from': dep,
        'data-to': b.name,
      }));
    }
  });

  const stuckBranch = tx.stuck && tx.stuckOn ? tx.stuckOn.branch : null;
  branches.forEach((b, i) => {
    const { x, y } = positions[i];
    const g = el('g', {
      class: `node tone-${tone(b.status)}${b.name === stuckBranch ? ' stuck' : ''}`,
      transform: `translate(${x} ${y})`,
      'data-branch': b.name,
      'data-status': b.status,
    });
    const title = el('title', {}, `${b.name}: ${b.status}${b.vote ? `, vote ${b.vote}` : ''}${b.pivot ? ' (pivot)' : ''}`);
    g.append(title);
    g.append(el('rect', { width: NODE_W, height: NODE_H, rx: 8, ry: 8 }));
    g.append(el('text', { x: 10, y: 20, class: 'name' }, truncate(b.name, 20) + (b.pivot ? ' ◆' : '')));
    const detail = b.vote ? `${b.status} · vote ${b.vote}` : b.status;
    g.append(el('text', { x: 10, y: 39, class: 'state' }, truncate(detail, 24)));
    svg.append(g);
  });
  return svg;
}

function truncate(text, max) {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}
