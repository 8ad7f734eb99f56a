/**
 * The NIfTI viewer: niivue (WebGL2, bundled into this extension at build time, never fetched at run time) in a
 * JupyterLab main-area panel, showing one series' image. The bytes come from the server extension
 * (``series/<id>/image``), i.e. from the INCloud API with the user's token; nothing is written to disk.
 */
import { ServerConnection } from '@jupyterlab/services';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';
import { Niivue, SLICE_TYPE } from '@niivue/niivue';

import { ISeriesContext, seriesTitle } from './archive';
import { requestBytes } from './request';

export { SLICE_TYPE };

export class NiftiViewer extends Widget {
  constructor(ctx: ISeriesContext, settings: ServerConnection.ISettings) {
    super();
    this.ctx = ctx;
    this._settings = settings;
    this.addClass('jp-incloud-Viewer');
    this.node.dataset.series = String(ctx.series.id);
    this.node.dataset.status = 'loading';
    const stage = document.createElement('div');
    stage.className = 'jp-incloud-Viewer-stage';
    this._canvas = document.createElement('canvas');
    this._canvas.className = 'jp-incloud-Viewer-canvas';
    stage.append(this._canvas);
    this._footer = document.createElement('div');
    this._footer.className = 'jp-incloud-Viewer-footer';
    this._footer.textContent = `Loading ${seriesTitle(ctx)}…`;
    this.node.append(stage, this._footer);
  }

  readonly ctx: ISeriesContext;

  /** Axial, coronal, sagittal, the three together, or a 3-D rendering. */
  setSliceType(type: SLICE_TYPE): void {
    this._nv?.setSliceType(type);
  }

  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    if (!this._started) {
      this._started = true;
      void this._load();
    }
  }

  protected onResize(msg: Widget.ResizeMessage): void {
    super.onResize(msg);
    this._nv?.resizeListener();
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    // Give the WebGL context back at once (browsers keep only a few alive).
    this._nv?.gl?.getExtension('WEBGL_lose_context')?.loseContext();
    this._nv = null;
    super.dispose();
  }

  private async _load(): Promise<void> {
    const nv = new Niivue({
      backColor: [0, 0, 0, 1],
      show3Dcrosshair: true,
      dragAndDropEnabled: false,
      isResizeCanvas: true,
      loadingText: 'Loading…',
      logLevel: 'warn'
    });
    this._nv = nv;
    try {
      await nv.attachToCanvas(this._canvas);
      nv.onLocationChange = (data: unknown) => {
        this._footer.textContent = (data as { string: string }).string;
      };
      const { name, data } = await requestBytes(`series/${this.ctx.series.id}/image`, this._settings);
      if (this.isDisposed) {
        return;
      }
      await nv.loadFromArrayBuffer(data, name);
      nv.setSliceType(SLICE_TYPE.MULTIPLANAR);
      const image = nv.volumes[0];
      const dims = image?.dims ? Array.from(image.dims).slice(1, 1 + (image.dims[0] || 3)) : [];
      this.node.dataset.dims = dims.join('x');
      this._footer.textContent = `${seriesTitle(this.ctx)}: ${dims.join(' × ')} voxels`;
      this.node.dataset.status = 'ready';
    } catch (error) {
      this.node.dataset.status = 'error';
      this._footer.textContent = `Cannot show ${seriesTitle(this.ctx)}: ${(error as Error).message || error}`;
      this._footer.classList.add('jp-incloud-error');
    }
  }

  private _settings: ServerConnection.ISettings;
  private _canvas: HTMLCanvasElement;
  private _footer: HTMLElement;
  private _nv: Niivue | null = null;
  private _started = false;
}
