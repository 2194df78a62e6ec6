// The coordinator's HTTP API as the dashboard uses it. The operator key lives in sessionStorage
// (this tab only, gone when it closes) and travels only in the Authorization header, never in a URL.

const KEY = 'treaty.operatorKey';

export class Unauthorized extends Error {
  constructor(message) {
    super(message);
    this.name = 'Unauthorized';
  }
}

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.name = 'ApiError';
    this.status = status;
    this.problem = problem;
  }
}

export function getKey() {
  return sessionStorage.getItem(KEY);
}

export function setKey(key) {
  sessionStorage.setItem(KEY, key);
}

export function clearKey() {
  sessionStorage.removeItem(KEY);
}

async function request(method, path, body) {
  const headers = { Accept: 'application/json, application/problem+json' };
  const key = getKey();
  if (key) {
    headers.Authorization = `Bearer ${key}`;
  }
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
  }
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
    credentials: 'omit',
    redirect: 'error',
  });
  if (response.status === 401) {
    throw new Unauthorized(getKey() ? 'The key was refused.' : 'This coordinator needs a key.');
  }
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!response.ok) {
    throw new ApiError(response.status, json);
  }
  return json;
}

function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== '') {
      search.set(name, String(value));
    }
  }
  const text = search.toString();
  return text ? `?${text}` : '';
}

const enc = encodeURIComponent;

export const api = {
  list: (filters) => request('GET', `/api/v1/transactions${query(filters)}`),
  counts: (filters) => request('GET', `/api/v1/transaction-counts${query({ ...filters, status: undefined, limit: undefined, cursor: undefined })}`),
  get: (gid) => request('GET', `/api/v1/transactions/${enc(gid)}`),
  events: (gid) => request('GET', `/api/v1/transactions/${enc(gid)}/events`),
  retry: (gid) => request('POST', `/api/v1/transactions/${enc(gid)}/retry`),
  abort: (gid, reason) => request('POST', `/api/v1/transactions/${enc(gid)}/abort`, reason ? { reason } : undefined),
  instances: () => request('GET', '/api/v1/instances'),
  deadLetters: (filters) => request('GET', `/api/v1/dead-letters${query(filters)}`),
  replayDeadLetter: (source, id) => request('POST', `/api/v1/dead-letters/${enc(source)}/${enc(id)}/replay`),
  settings: () => request('GET', '/dashboard/settings.json'),
};
