// Times, durations and the queue figures computed from application history.

/** "3 s ago", "5 min ago"... from an RFC 3339 time. */
export function ago(at, now = Date.now()) {
  if (!at) return '';
  const s = Math.max(0, Math.round((now - Date.parse(at)) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

/** A duration in ms as "850 ms", "4.2 s", "3 min 5 s", "2 h 4 min". */
export function duration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return '–';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

/** A local date and time, to the second. */
export function time(at) {
  if (!at) return '';
  const d = new Date(at);
  return d.toLocaleString(undefined, { dateStyle: 'short', timeStyle: 'medium' });
}

/**
 * Queue time of one application: from its NEW entry (creation) to its first
 * ALLOCATED entry, in ms; null if it was never allocated.
 */
export function queueTime(app) {
  const hist = app.status?.history || [];
  const created = hist.find((e) => e.phase === 'NEW')?.at || app.metadata.createdAt;
  const allocated = hist.find((e) => e.phase === 'ALLOCATED')?.at;
  if (!created || !allocated) return null;
  return Date.parse(allocated) - Date.parse(created);
}

/** The p-th percentile (nearest rank) of `values`; null when empty. */
export function percentile(values, p) {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length));
  return sorted[rank - 1];
}

export const PHASES = ['NEW', 'ELECTED', 'ALLOCATED', 'DEALLOCATE', 'DEALLOCATED', 'ERROR'];

/** The label name of an application's `spec.label` ("ubuntu-ci:2" -> "ubuntu-ci"). */
export function labelName(app) {
  return String(app.spec?.label || '').split(':')[0];
}
