using System.Collections.Concurrent;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace Treaty.Dashboard.Tests.Support;

/// <summary>
/// A participant on a free loopback port that answers every branch call 200 with a small JSON body,
/// except on the paths told to fail (a chosen status) until told otherwise.
/// </summary>
public sealed class TestParticipant : IAsyncDisposable
{
    private readonly WebApplication _app;
    private readonly ConcurrentDictionary<string, int> _failing = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, TimeSpan> _delays = new(StringComparer.Ordinal);

    private TestParticipant(WebApplication app) => _app = app;

    public Uri BaseAddress { get; private set; } = null!;

    public static async Task<TestParticipant> StartAsync()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        var app = builder.Build();
        var participant = new TestParticipant(app);
        app.MapPost("/{**path}", participant.HandleAsync);
        await app.StartAsync();
        participant.BaseAddress = new Uri(app.Urls.Single());
        return participant;
    }

    public string Url(string path) => new Uri(BaseAddress, path).AbsoluteUri;

    /// <summary>Every call to <paramref name="path"/> answers <paramref name="status"/> until <see cref="Heal"/>.</summary>
    public void Fail(string path, int status) => _failing[Normalize(path)] = status;

    public void Heal(string path) => _failing.TryRemove(Normalize(path), out _);

    public void Delay(string path, TimeSpan delay) => _delays[Normalize(path)] = delay;

    public async ValueTask DisposeAsync()
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
        try
        {
            await _app.StopAsync(timeout.Token);
        }
        finally
        {
            await _app.DisposeAsync();
        }
    }

    private static string Normalize(string path) => "/" + path.TrimStart('/');

    private async Task HandleAsync(HttpContext context)
    {
        var path = context.Request.Path.Value ?? "/";
        if (_delays.TryGetValue(path, out var delay))
        {
            await Task.Delay(delay, context.RequestAborted);
        }

        context.Response.ContentType = "application/json";
        if (_failing.TryGetValue(path, out var status))
        {
            context.Response.StatusCode = status;
            await context.Response.WriteAsync(JsonSerializer.Serialize(new Dictionary<string, string> { ["detail"] = $"{path} is down for the test" }), context.RequestAborted);
            return;
        }

        var op = context.Request.Headers["Treaty-Op"].ToString();
        // A 2PC/3PC vote is an answer like any other: 200 is yes.
        await context.Response.WriteAsync(JsonSerializer.Serialize(new Dictionary<string, string> { ["done"] = op, ["path"] = path }), context.RequestAborted);
    }
}
