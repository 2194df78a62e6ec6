using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace Treaty.Cli.Tests.Support;

/// <summary>
/// A load balancer in front of several coordinator instances, as an operator would put one: each
/// request goes to the next instance in turn; an instance that refuses the connection (dead) is
/// skipped and the next one tried. A request already sent is never sent again (a timeout or a
/// reset after sending answers 502, as a real balancer would), so nothing is doubled by the proxy.
/// </summary>
public sealed class RoundRobinProxy : IAsyncDisposable
{
    private static readonly HashSet<string> HopHeaders = new(StringComparer.OrdinalIgnoreCase)
    {
        "Connection", "Keep-Alive", "Transfer-Encoding", "Upgrade", "Host", "Content-Length", "Content-Type",
    };

    private readonly WebApplication _app;
    private readonly IReadOnlyList<string> _backends;
    private readonly HttpClient _http = new(new SocketsHttpHandler { ConnectTimeout = TimeSpan.FromSeconds(2), AllowAutoRedirect = false })
    {
        Timeout = TimeSpan.FromSeconds(60),
    };

    private int _next;

    private RoundRobinProxy(WebApplication app, IReadOnlyList<string> backends)
    {
        _app = app;
        _backends = backends;
    }

    /// <summary>The proxy's base URL, without a trailing slash.</summary>
    public string Url => _app.Urls.Single();

    /// <summary>Requests answered by each backend, by its URL.</summary>
    public Dictionary<string, int> Served { get; } = new(StringComparer.Ordinal);

    public static async Task<RoundRobinProxy> StartAsync(IReadOnlyList<string> backends)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        var app = builder.Build();
        var proxy = new RoundRobinProxy(app, backends);
        app.Run(proxy.ForwardAsync);
        await app.StartAsync();
        return proxy;
    }

    private async Task ForwardAsync(HttpContext context)
    {
        using var body = new MemoryStream();
        await context.Request.Body.CopyToAsync(body, context.RequestAborted);
        var start = Interlocked.Increment(ref _next);
        for (var i = 0; i < _backends.Count; i++)
        {
            var backend = _backends[(int)((uint)(start + i) % (uint)_backends.Count)];
            using var request = new HttpRequestMessage(new HttpMethod(context.Request.Method), backend + context.Request.Path + context.Request.QueryString);
            if (body.Length > 0 || context.Request.ContentType is not null)
            {
                request.Content = new ByteArrayContent(body.ToArray());
                if (context.Request.ContentType is { } type)
                {
                    request.Content.Headers.TryAddWithoutValidation("Content-Type", type);
                }
            }

            foreach (var header in context.Request.Headers)
            {
                if (!HopHeaders.Contains(header.Key))
                {
                    request.Headers.TryAddWithoutValidation(header.Key, (IEnumerable<string?>)header.Value);
                }
            }

            HttpResponseMessage response;
            try
            {
                response = await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, context.RequestAborted);
            }
            catch (HttpRequestException e) when (e.HttpRequestError == HttpRequestError.ConnectionError)
            {
                continue; // dead instance: nothing was sent, try the next
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException && !context.RequestAborted.IsCancellationRequested)
            {
                context.Response.StatusCode = StatusCodes.Status502BadGateway;
                return;
            }

            using (response)
            {
                lock (Served)
                {
                    Served[backend] = Served.GetValueOrDefault(backend) + 1;
                }

                context.Response.StatusCode = (int)response.StatusCode;
                foreach (var header in response.Headers.Concat(response.Content.Headers))
                {
                    if (!HopHeaders.Contains(header.Key) || header.Key.Equals("Content-Type", StringComparison.OrdinalIgnoreCase))
                    {
                        context.Response.Headers[header.Key] = header.Value.ToArray();
                    }
                }

                await response.Content.CopyToAsync(context.Response.Body, context.RequestAborted);
                return;
            }
        }

        context.Response.StatusCode = StatusCodes.Status503ServiceUnavailable;
    }

    public async ValueTask DisposeAsync()
    {
        await _app.DisposeAsync();
        _http.Dispose();
    }
}
