using System.Collections.Concurrent;
using System.Net;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;

namespace Treaty.Cli.Experiments;

/// <summary>How one participant answers one call: 503 when down, 200 otherwise, after the delay.</summary>
/// <param name="Down">Answer 503 (the coordinator reads it as "outcome unknown" and may retry).</param>
/// <param name="Delay">Wait this long before answering, either way.</param>
internal readonly record struct ParticipantAnswer(bool Down, TimeSpan Delay);

/// <summary>
/// Generic participants for the experiments, hosted in this process: a Kestrel app on 127.0.0.1
/// (a port the OS picks) with one route per participant and operation, <c>POST /p/{i}/{op}</c>.
/// They hold no data, so they need no barrier and ignore the <c>Treaty-Signature</c> header; what
/// each call gets is up to the experiment's <see cref="ParticipantAnswer"/> function. Every call is
/// counted by the transaction it belongs to (its <c>Treaty-Gid</c> header) and operation.
/// </summary>
internal sealed class ExperimentParticipants : IAsyncDisposable
{
    private readonly WebApplication _app;
    private readonly Func<int, string, ParticipantAnswer> _answer;
    private readonly ConcurrentDictionary<(string Gid, string Op), int> _calls = new();
    private long _total;
    private long _down;

    private ExperimentParticipants(Func<int, string, ParticipantAnswer> answer)
    {
        _answer = answer;
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions
        {
            ApplicationName = typeof(ExperimentParticipants).Assembly.GetName().Name,
            ContentRootPath = AppContext.BaseDirectory,
            EnvironmentName = "Production",
        });
        builder.Logging.ClearProviders();
        // Not the console's lifetime: Ctrl+C belongs to the command that runs the experiment, which
        // stops these participants by disposing them.
        builder.Services.AddSingleton<IHostLifetime, EmbeddedLifetime>();
        // Port 0: the OS picks a free port as Kestrel binds it, so no other process can take it in between.
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.Listen(IPAddress.Loopback, 0);
            kestrel.AddServerHeader = false;
        });
        _app = builder.Build();
        _app.MapPost("/p/{participant:int}/{op}", HandleAsync);
    }

    /// <summary>Where the participants listen, e.g. <c>http://127.0.0.1:41234</c>.</summary>
    public string BaseUrl { get; private set; } = "";

    /// <summary>Every call received so far.</summary>
    public long TotalCalls => Interlocked.Read(ref _total);

    /// <summary>Calls answered 503 so far.</summary>
    public long DownAnswers => Interlocked.Read(ref _down);

    /// <summary>Starts the participants; dispose to stop them.</summary>
    /// <param name="answer">How participant <c>i</c> answers operation <c>op</c> now (called once per call, concurrently).</param>
    /// <param name="cancellationToken">Cancels the start.</param>
    public static async Task<ExperimentParticipants> StartAsync(Func<int, string, ParticipantAnswer> answer, CancellationToken cancellationToken)
    {
        var participants = new ExperimentParticipants(answer);
        try
        {
            await participants._app.StartAsync(cancellationToken);
            var addresses = participants._app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>();
            participants.BaseUrl = addresses?.Addresses.FirstOrDefault()?.TrimEnd('/')
                ?? throw new InvalidOperationException("The experiment's participants did not report the address they listen on.");
            return participants;
        }
        catch
        {
            await participants.DisposeAsync();
            throw;
        }
    }

    /// <summary>The URL of participant <paramref name="participant"/>'s operation <paramref name="op"/>.</summary>
    public string Url(int participant, string op) => $"{BaseUrl}/p/{participant}/{op}";

    /// <summary>Calls received for transaction <paramref name="gid"/>, every operation together.</summary>
    public int CallsFor(string gid) => _calls.Where(c => c.Key.Gid == gid).Sum(c => c.Value);

    /// <summary>Calls received for transaction <paramref name="gid"/>'s operation <paramref name="op"/>.</summary>
    public int CallsFor(string gid, string op) => _calls.GetValueOrDefault((gid, op));

    private async Task<IResult> HandleAsync(int participant, string op, HttpContext http, CancellationToken cancellationToken)
    {
        var gid = http.Request.Headers["Treaty-Gid"].ToString();
        _calls.AddOrUpdate((gid, op), 1, static (_, n) => n + 1);
        Interlocked.Increment(ref _total);
        var answer = _answer(participant, op);
        if (answer.Delay > TimeSpan.Zero)
        {
            await Task.Delay(answer.Delay, TimeProvider.System, cancellationToken);
        }

        if (answer.Down)
        {
            Interlocked.Increment(ref _down);
            return Results.Text("""{"down":true}""", "application/json", statusCode: StatusCodes.Status503ServiceUnavailable);
        }

        return Results.Text("""{"ok":true}""", "application/json");
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            await _app.StopAsync(CancellationToken.None);
        }
        catch (InvalidOperationException)
        {
            // never started
        }

        await _app.DisposeAsync();
    }

    private sealed class EmbeddedLifetime : IHostLifetime
    {
        public Task WaitForStartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}
