/**
 * The code a series' "insert" action puts into a notebook: ``incloud_kernel.connect()`` once per notebook, then
 * ``client.load(<series id>)``, the nibabel image streamed with the user's token (docs/hub.md).
 */
import { INotebookTracker, NotebookActions, NotebookPanel } from '@jupyterlab/notebook';

import { ISeriesContext, seriesTitle } from './archive';

/** A Python name for the image, from the BIDS suffix ("T1w" -> "t1w"; "bold" -> "bold"). */
export function variableName(ctx: ISeriesContext): string {
  const base = ctx.series.suffix.toLowerCase().replace(/[^a-z0-9_]/g, '_').replace(/^([0-9])/, '_$1');
  return `${base || 'img'}_${ctx.series.id}`;
}

/** The cell's source; ``withConnect``: also the import and ``connect()`` (a notebook without them yet). */
export function loadCode(ctx: ISeriesContext, withConnect: boolean): string {
  const name = variableName(ctx);
  const lines = [`# ${seriesTitle(ctx)} (QC ${ctx.series.qc_status})`];
  if (withConnect) {
    lines.push('import incloud_kernel', '', 'client = incloud_kernel.connect()');
  }
  lines.push(`${name} = client.load(${ctx.series.id})  # nibabel image, streamed with your token`, `${name}.shape`);
  return lines.join('\n');
}

/** Whether a cell of the notebook already connects (then only the load line is inserted). */
function connects(panel: NotebookPanel): boolean {
  const cells = panel.content.model?.cells;
  if (!cells) {
    return false;
  }
  for (let i = 0; i < cells.length; i++) {
    if (cells.get(i).sharedModel.getSource().includes('incloud_kernel.connect(')) {
      return true;
    }
  }
  return false;
}

/**
 * Insert the loading code as a new code cell below the active cell of the current notebook; returns the panel it
 * went into, or null when no notebook is open (the caller opens one first).
 */
export function insertLoadCode(tracker: INotebookTracker, ctx: ISeriesContext): NotebookPanel | null {
  const panel = tracker.currentWidget;
  if (!panel || !panel.content.model) {
    return null;
  }
  const notebook = panel.content;
  const source = loadCode(ctx, !connects(panel));
  const active = notebook.activeCell;
  if (active && active.model.type === 'code' && active.model.sharedModel.getSource().trim() === '') {
    active.model.sharedModel.setSource(source); // an empty code cell (a new notebook's first) is reused
  } else {
    NotebookActions.insertBelow(notebook);
    if (notebook.activeCell?.model.type !== 'code') {
      NotebookActions.changeCellType(notebook, 'code');
    }
    notebook.activeCell!.model.sharedModel.setSource(source);
  }
  return panel;
}
