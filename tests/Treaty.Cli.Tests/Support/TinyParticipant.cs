using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace Treaty.Cli.Tests.Support;

/// <summary>
/// A participant that answers by the first path segment: <c>/ok/...</c> 200, <c>/no/...</c> 409,
/// <c>/down/...</c> 503. Counts the calls it got.
/// </summary>
public sealed class TinyParticipant : IAsyncDisposable
{
    private readonly WebApplication _app;
    private int _calls;

    private TinyParticipant(WebApplication app) => _app = app;

    public int Calls => Volatile.Read(ref _calls);

    public static async Task<TinyParticipant> StartAsync()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        var app = builder.Build();
        TinyParticipant? participant = null;
        app.MapPost("/{answer}/{**rest}", (string answer) =>
        {
            Interlocked.Increment(ref participant!._calls);
            return answer switch
            {
                "ok" => Results.Ok(new { done = true }),
                "no" => Results.Conflict(new { detail = "declined" }),
                _ => Results.StatusCode(503),
            };
        });
        participant = new TinyParticipant(app);
        await app.StartAsync();
        return participant;
    }

    /// <summary>The participant's base URL, without a trailing slash.</summary>
    public string Url => _app.Urls.Single();

    public async ValueTask DisposeAsync() => await _app.DisposeAsync();
}
