using Microsoft.Extensions.Hosting;

namespace Treaty.Cli.Bench;

/// <summary>
/// The bench's participant, in the bench's own process: Kestrel on a free 127.0.0.1 port that reads
/// the body of a POST on any path and answers 200 <c>{}</c> — a saga action or compensation, a TCC
/// try/confirm/cancel, a 2PC/3PC YES vote or commit, a message's delivery or its queryPrepared,
/// and the peer's calls (<c>/peer/b{i}/action</c>) — except under <c>/no/</c>, where it answers
/// 409 (a definitive refusal: a NO vote, a failed try or action, a sender that rolled back).
/// </summary>
internal sealed class NoOpParticipant : IAsyncDisposable
{
    private readonly WebApplication _app;

    private NoOpParticipant(WebApplication app) => _app = app;

    /// <summary>The base URL, without a trailing slash.</summary>
    public string Url => _app.Urls.Single();

    public static async Task<NoOpParticipant> StartAsync(CancellationToken cancellationToken)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Logging.ClearProviders();
        // Ctrl+C belongs to the command (it stops the coordinator and then this), not to this host.
        builder.Services.AddSingleton<IHostLifetime, NoSignalLifetime>();
        var app = builder.Build();
        app.MapPost("/{**path}", async (HttpRequest request, string? path) =>
        {
            // Read the body as a real participant would.
            using var reader = new StreamReader(request.Body);
            await reader.ReadToEndAsync(request.HttpContext.RequestAborted);
            return path is not null && path.StartsWith("no/", StringComparison.Ordinal)
                ? Results.Text("""{"detail":"no"}""", "application/json", statusCode: StatusCodes.Status409Conflict)
                : Results.Text("{}", "application/json");
        });
        await app.StartAsync(cancellationToken);
        return new NoOpParticipant(app);
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync(CancellationToken.None);
        await _app.DisposeAsync();
    }

    private sealed class NoSignalLifetime : IHostLifetime
    {
        public Task WaitForStartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}
