using System.Collections.Concurrent;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace Treaty.Client.Tests.Support;

/// <summary>
/// A participant on its own Kestrel with fixed answers: <c>POST /ok</c> 200, <c>POST /conflict</c>
/// 409 (a definitive failure), <c>POST /unavailable</c> 503 (outcome unknown: retried). It counts
/// the calls of each path per transaction (the Treaty-Gid header) and records every call with its
/// branch and operation (the Treaty-Branch and Treaty-Op headers) in arrival order.
/// </summary>
public sealed class TinyParticipant : IAsyncDisposable
{
    private readonly WebApplication _app;
    private readonly ConcurrentDictionary<(string Gid, string Path), int> _calls = new();
    private readonly ConcurrentQueue<ParticipantCall> _log = new();

    private TinyParticipant(WebApplication app) => _app = app;

    public Uri BaseAddress { get; private set; } = null!;

    public string Ok => Url("ok");

    public string Conflict => Url("conflict");

    public string Unavailable => Url("unavailable");

    public static async Task<TinyParticipant> StartAsync()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        var app = builder.Build();
        var participant = new TinyParticipant(app);
        app.MapPost("/ok", (HttpContext c) => participant.Answer(c, StatusCodes.Status200OK));
        app.MapPost("/conflict", (HttpContext c) => participant.Answer(c, StatusCodes.Status409Conflict));
        app.MapPost("/unavailable", (HttpContext c) => participant.Answer(c, StatusCodes.Status503ServiceUnavailable));
        await app.StartAsync();
        participant.BaseAddress = new Uri(app.Urls.Single());
        return participant;
    }

    /// <summary>How many calls of <c>/{path}</c> the transaction <paramref name="gid"/> made.</summary>
    public int CallsOf(string gid, string path) => _calls.GetValueOrDefault((gid, "/" + path));

    /// <summary>Every call of the transaction <paramref name="gid"/>, in arrival order.</summary>
    public IReadOnlyList<ParticipantCall> CallsOf(string gid) => [.. _log.Where(c => c.Gid == gid)];

    /// <summary>How many calls of operation <paramref name="op"/> branch <paramref name="branch"/> of <paramref name="gid"/> received.</summary>
    public int CallsOf(string gid, string branch, string op) => _log.Count(c => c.Gid == gid && c.Branch == branch && c.Op == op);

    public async ValueTask DisposeAsync()
    {
        using var stopTimeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
        try
        {
            await _app.StopAsync(stopTimeout.Token);
        }
        finally
        {
            await _app.DisposeAsync();
        }
    }

    private string Url(string path) => new Uri(BaseAddress, path).AbsoluteUri;

    private IResult Answer(HttpContext context, int status)
    {
        var gid = context.Request.Headers["Treaty-Gid"].ToString();
        var path = context.Request.Path.Value ?? "/";
        _calls.AddOrUpdate((gid, path), 1, (_, n) => n + 1);
        _log.Enqueue(new ParticipantCall(gid, context.Request.Headers["Treaty-Branch"].ToString(), context.Request.Headers["Treaty-Op"].ToString(), path));
        return Results.Json(new Dictionary<string, string> { ["detail"] = $"answered {status}" }, statusCode: status);
    }
}

/// <summary>One call a <see cref="TinyParticipant"/> received.</summary>
public sealed record ParticipantCall(string Gid, string Branch, string Op, string Path);
