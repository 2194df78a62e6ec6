using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Treaty.Core.Contracts;
using Treaty.Core.Serialization;

namespace Treaty.AspNetCore.Tests.InDoubt;

/// <summary>
/// A hand-written coordinator that only answers <c>GET /api/v1/transactions/{gid}</c>, as scripted
/// per gid (real Kestrel on 127.0.0.1). An unscripted gid gets the coordinator's own 404
/// problem+json. <see cref="Hold"/> keeps the answer back until the test releases it.
/// </summary>
public sealed class FakeCoordinator : IAsyncDisposable
{
    private static readonly JsonElement EmptyPayload = JsonDocument.Parse("{}").RootElement.Clone();
    private readonly WebApplication _app;
    private readonly ConcurrentDictionary<string, Func<HttpContext, Task>> _answers = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, TaskCompletionSource> _holds = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, int> _asked = new(StringComparer.Ordinal);

    private FakeCoordinator(WebApplication app) => _app = app;

    public Uri BaseAddress { get; private set; } = null!;

    public static async Task<FakeCoordinator> StartAsync()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        var app = builder.Build();
        var coordinator = new FakeCoordinator(app);
        app.MapGet("/api/v1/transactions/{gid}", coordinator.AnswerAsync);
        await app.StartAsync();
        coordinator.BaseAddress = new Uri(app.Urls.Single() + "/");
        return coordinator;
    }

    /// <summary>An address on 127.0.0.1 where nothing listens: every question is refused.</summary>
    public static Uri Unreachable()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        return new Uri($"http://127.0.0.1:{port}/");
    }

    /// <summary>From now on <paramref name="gid"/> is a transaction with this status and decision.</summary>
    public void Says(string gid, string status, string? decision = null, string protocol = "2pc")
    {
        var now = DateTimeOffset.UnixEpoch;
        var view = new TransactionView(gid, protocol, status, false, null, now, now, null, null, EmptyPayload, []) { Decision = decision };
        _answers[gid] = http => http.Response.WriteAsJsonAsync(view, TreatyJsonContext.Default.TransactionView);
    }

    /// <summary>From now on asking about <paramref name="gid"/> answers <paramref name="statusCode"/> with a plain text body.</summary>
    public void Fails(string gid, int statusCode) =>
        _answers[gid] = http =>
        {
            http.Response.StatusCode = statusCode;
            return http.Response.WriteAsync("not a coordinator answer");
        };

    /// <summary>The next answers about <paramref name="gid"/> wait until the returned source completes.</summary>
    public TaskCompletionSource Hold(string gid)
    {
        var hold = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _holds[gid] = hold;
        return hold;
    }

    /// <summary>How many times <paramref name="gid"/> was asked about.</summary>
    public int Asked(string gid) => _asked.GetValueOrDefault(gid);

    public async ValueTask DisposeAsync()
    {
        foreach (var hold in _holds.Values)
        {
            hold.TrySetResult();
        }

        await _app.StopAsync();
        await _app.DisposeAsync();
    }

    private async Task AnswerAsync(HttpContext http, string gid)
    {
        _asked.AddOrUpdate(gid, 1, (_, n) => n + 1);
        if (_holds.TryGetValue(gid, out var hold))
        {
            await hold.Task.WaitAsync(TimeSpan.FromSeconds(30));
        }

        if (_answers.TryGetValue(gid, out var answer))
        {
            await answer(http);
            return;
        }

        // what Treaty.Server answers for a gid it has no record of
        http.Response.StatusCode = 404;
        http.Response.ContentType = "application/problem+json";
        await http.Response.WriteAsync($$"""{"type":"{{ProblemTypes.NotFound}}","title":"Transaction not found","status":404}""");
    }
}
