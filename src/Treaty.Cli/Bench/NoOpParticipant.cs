using Microsoft.Extensions.Hosting;

namespace Treaty.Cli.Bench;

/// <summary>
/// The bench's participant, in the bench's own process: Kestrel on a free 127.0.0.1 port that reads
/// the body of a POST on any path and answers 200 <c>{}</c> — a saga action or compensation, a TCC
/// try/confirm/cancel, a 2PC/3PC YES vote or commit, a message's delivery or its queryPrepared,
/// and the peer's calls (<c>/peer/b{i}/action</c>) — except under <c>/no/</c>, where it answers
/// 409 (a definitive refusal: a NO vote, a failed try or action, a sender that rolled back), and
/// under <c>/hold/</c>, where the answer waits for <see cref="Holds"/> to open (transactions held in
/// flight, <c>treaty bench --in-flight</c>).
/// </summary>
internal sealed class NoOpParticipant : IAsyncDisposable
{
    private readonly WebApplication _app;

    private NoOpParticipant(WebApplication app, HoldGate holds)
    {
        _app = app;
        Holds = holds;
    }

    /// <summary>The base URL, without a trailing slash.</summary>
    public string Url => _app.Urls.Single();

    /// <summary>What holds the answers to calls under <c>/hold/</c>.</summary>
    public HoldGate Holds { get; }

    public static async Task<NoOpParticipant> StartAsync(CancellationToken cancellationToken)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Logging.ClearProviders();
        // Ctrl+C belongs to the command (it stops the coordinator and then this), not to this host.
        builder.Services.AddSingleton<IHostLifetime, NoSignalLifetime>();
        var app = builder.Build();
        var holds = new HoldGate();
        app.MapPost("/{**path}", async (HttpRequest request, string? path) =>
        {
            // Read the body as a real participant would.
            using var reader = new StreamReader(request.Body);
            await reader.ReadToEndAsync(request.HttpContext.RequestAborted);
            if (path is not null && path.StartsWith("hold/", StringComparison.Ordinal))
            {
                await holds.PassAsync(request.HttpContext.RequestAborted);
            }

            return path is not null && path.StartsWith("no/", StringComparison.Ordinal)
                ? Results.Text("""{"detail":"no"}""", "application/json", statusCode: StatusCodes.Status409Conflict)
                : Results.Text("{}", "application/json");
        });
        await app.StartAsync(cancellationToken);
        return new NoOpParticipant(app, holds);
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync(CancellationToken.None);
        await _app.DisposeAsync();
    }

    /// <summary>Closed until <see cref="Open"/>: a call under <c>/hold/</c> waits, and is counted while it does.</summary>
    internal sealed class HoldGate
    {
        private readonly TaskCompletionSource _open = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private int _held;

        /// <summary>Calls waiting now.</summary>
        public int Held => Volatile.Read(ref _held);

        /// <summary>Lets every waiting call answer, and every later one straight through.</summary>
        public void Open() => _open.TrySetResult();

        public async Task PassAsync(CancellationToken cancellationToken)
        {
            Interlocked.Increment(ref _held);
            try
            {
                await _open.Task.WaitAsync(cancellationToken);
            }
            finally
            {
                Interlocked.Decrement(ref _held);
            }
        }
    }

    private sealed class NoSignalLifetime : IHostLifetime
    {
        public Task WaitForStartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}
