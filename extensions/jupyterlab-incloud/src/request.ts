/**
 * Calls to the extension's server routes (incloud_jupyterlab/routes.py) in the user's own Jupyter server.
 * ServerConnection adds the server's xsrf header and credentials, so these requests are authenticated exactly
 * like JupyterLab's own; the INCloud token never reaches the browser.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** The server extension's route namespace (the template's convention: Python name with dashes). */
const NAMESPACE = 'incloud-jupyterlab';

async function call(
  endPoint: string,
  settings: ServerConnection.ISettings
): Promise<Response> {
  const url = URLExt.join(settings.baseUrl, NAMESPACE, endPoint);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, {}, settings);
  } catch (error) {
    throw new ServerConnection.NetworkError(error as any);
  }
  if (!response.ok) {
    let message = response.statusText;
    try {
      message = (await response.json()).message || message;
    } catch {
      // not JSON: a server without the extension (404 page) or a proxy error
      if (response.status === 404) {
        message = 'the incloud_jupyterlab server extension is not enabled';
      }
    }
    throw new ServerConnection.ResponseError(response, message);
  }
  return response;
}

/** GET a JSON route. */
export async function requestAPI<T>(
  endPoint: string,
  settings: ServerConnection.ISettings
): Promise<T> {
  return (await call(endPoint, settings)).json() as Promise<T>;
}

/** GET a binary route; returns its bytes and the file name the server gives (X-Incloud-Name). */
export async function requestBytes(
  endPoint: string,
  settings: ServerConnection.ISettings
): Promise<{ name: string; data: ArrayBuffer }> {
  const response = await call(endPoint, settings);
  const name = response.headers.get('X-Incloud-Name') || 'image.nii.gz';
  return { name, data: await response.arrayBuffer() };
}
