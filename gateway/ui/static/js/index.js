// The tenant's recent sessions, newest first; refreshed every few seconds.

const cfg = JSON.parse(document.getElementById('config').textContent);
document.getElementById('tenant').textContent = cfg.tenant;

const when = (t) => (t == null ? '' : new Date(t * 1000).toLocaleString());

async function refresh() {
  const conn = document.getElementById('conn');
  try {
    const res = await fetch('api/sessions?limit=200', { cache: 'no-store', credentials: 'same-origin' });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const { sessions } = await res.json();
    const body = document.querySelector('#sessions tbody');
    body.replaceChildren(...sessions.map((s) => {
      const tr = document.createElement('tr');
      tr.dataset.session = s.session;
      const a = document.createElement('a');
      a.href = 'sessions/' + encodeURIComponent(s.session);
      a.textContent = s.session;
      const cells = [a, s.requests, s.variables, when(s.created), when(s.last_active), when(s.deadline)];
      for (const c of cells) {
        const td = document.createElement('td');
        td.append(c instanceof Node ? c : String(c));
        tr.append(td);
      }
      return tr;
    }));
    document.getElementById('empty').hidden = sessions.length > 0;
    document.body.dataset.state = 'live';
    conn.textContent = `updated ${new Date().toLocaleTimeString()}`;
    conn.className = 'ok';
  } catch (err) {
    conn.textContent = `retrying: ${err.message}`;
    conn.className = 'bad';
  }
  setTimeout(refresh, 5000);
}
refresh();
