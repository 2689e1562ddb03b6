// The board as data on the client: applying the board room's normalized ops (the same as
// apply_normalized in examples/board/model.py), and keeping a copy in step with the room's
// versions. No DOM here: tests/browser/board_model.mjs runs it under Node.

// Apply one normalized op to `board` ({uid, version, columns: [{id, title, cards: [{id,
// text}]}]}); the caller sets the version. Throws on an op that does not fit the board.
export function applyOp(board, op) {
  const column = (id) => {
    const col = board.columns.find((c) => c.id === id);
    if (!col) throw new Error(`unknown column ${id}`);
    return col;
  };
  const find = (id) => {
    for (const col of board.columns) {
      const i = col.cards.findIndex((card) => card.id === id);
      if (i >= 0) return [col, i];
    }
    throw new Error(`unknown card ${id}`);
  };
  switch (op.type) {
    case "add":
      column(op.column).cards.splice(op.index, 0, {id: op.id, text: op.text});
      break;
    case "edit": {
      const [col, i] = find(op.id);
      col.cards[i] = {...col.cards[i], text: op.text};
      break;
    }
    case "move": {
      const [col, i] = find(op.id);
      const dest = column(op.column);
      const [card] = col.cards.splice(i, 1);
      dest.cards.splice(op.index, 0, card);
      break;
    }
    case "delete": {
      const [col, i] = find(op.id);
      col.cards.splice(i, 1);
      break;
    }
    default:
      throw new Error(`unknown op type ${op.type}`);
  }
}

export const cloneBoard = (board) => JSON.parse(JSON.stringify(board));

// Keeps `board` equal to the room's board at some version:
//
// * reset(board): the whole board from the server (join reply, a fetch): taken as it is;
// * offer(board): a whole board pushed after a join: taken if it is another board or newer;
// * event(ev): a change event {uid, version, op}: applied when it is the next version,
//   ignored when older, kept when it comes early (a gap), and then the whole board is fetched
//   again with fetchBoard() (a Promise of the board) and what was kept is applied on top.
//
// onChange(kind) runs after the board changed ("reset" or "op").
export class BoardSync {
  constructor(fetchBoard, onChange = () => {}) {
    this.fetchBoard = fetchBoard;
    this.onChange = onChange;
    this.board = null;
    this.pending = [];
    this.fetching = false;
    this.seq = 0;          // a reset() makes an outstanding fetch stale
    this.fetches = 0;      // how many times the board was fetched again (for tests, the page)
    this.retryTimer = null;
  }

  get version() { return this.board ? this.board.version : null; }

  reset(board) {
    this.seq += 1;
    this.fetching = false;
    clearTimeout(this.retryTimer);
    this.board = cloneBoard(board);
    this.pending = this.pending.filter((ev) => ev.uid === board.uid && ev.version > board.version);
    this.onChange("reset");
    this.drain();
  }

  offer(board) {
    if (!this.board || board.uid !== this.board.uid || board.version > this.board.version) {
      this.reset(board);
    }
  }

  event(ev) {
    if (!ev || !ev.op || typeof ev.version !== "number") return;
    this.pending.push(ev);
    if (this.board && !this.fetching) this.drain();
  }

  drain() {
    const board = this.board;
    this.pending.sort((a, b) => a.version - b.version);
    const kept = [];
    let changed = false;
    let broken = false;
    for (const ev of this.pending) {
      if (broken || ev.uid !== board.uid || ev.version > board.version + 1) {
        kept.push(ev);
      } else if (ev.version === board.version + 1) {
        try {
          applyOp(board, ev.op);
          board.version = ev.version;
          if (ev.node) board.node = ev.node;
          changed = true;
        } catch {
          broken = true;  // should not happen: fetch the board again
          kept.push(ev);
        }
      }  // else: older than what we have
    }
    this.pending = kept;
    if (changed) this.onChange("op");
    if (kept.length || broken) this.refetch();
  }

  refetch() {
    if (this.fetching) return;
    this.fetching = true;
    this.fetches += 1;
    const seq = this.seq;
    this.fetchBoard().then(
      (board) => { if (seq === this.seq) this.reset(board); },
      () => {
        if (seq !== this.seq) return;
        this.fetching = false;
        this.retryTimer = setTimeout(() => {
          if (seq === this.seq && this.board && this.pending.length) this.drain();
        }, 1000);
      },
    );
  }
}
