using System.Collections.Concurrent;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Mvc;
using Microsoft.Extensions.Logging;

namespace Treaty.Client.Tests.Support;

/// <summary>
/// The sender of a two-phase message as a real service on its own Kestrel: <c>POST /query-prepared</c>
/// answers with <see cref="TreatyMessages.QueryPreparedAsync"/> over its database (200 committed,
/// 409 rolled back) exactly as docs/client.md shows it, and <c>POST /receive</c> is a receiver of the
/// message that records whether the sender's order row was visible when the message arrived.
/// </summary>
public sealed class SenderApp : IAsyncDisposable
{
    private readonly WebApplication _app;
    private readonly ConcurrentQueue<(string Gid, int Status)> _answers = new();
    private readonly ConcurrentQueue<string> _asked = new();
    private readonly ConcurrentQueue<Delivery> _deliveries = new();
    private volatile bool _unavailable;

    private SenderApp(WebApplication app) => _app = app;

    public Uri BaseAddress { get; private set; } = null!;

    public string QueryPrepared => new Uri(BaseAddress, "query-prepared").AbsoluteUri;

    public string Receive => new Uri(BaseAddress, "receive").AbsoluteUri;

    /// <summary>While true, queryPrepared answers 503 without looking at the database.</summary>
    public bool Unavailable
    {
        get => _unavailable;
        set => _unavailable = value;
    }

    public static async Task<SenderApp> StartAsync(SenderDatabase database)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        var app = builder.Build();
        var sender = new SenderApp(app);

        app.MapPost("/query-prepared", async ([FromHeader(Name = "Treaty-Gid")] string gid, CancellationToken ct) =>
        {
            sender._asked.Enqueue(gid);
            if (sender.Unavailable)
            {
                sender._answers.Enqueue((gid, StatusCodes.Status503ServiceUnavailable));
                return Results.StatusCode(StatusCodes.Status503ServiceUnavailable);
            }

            // The mapping a sender writes (docs/client.md).
            await using var connection = database.Connect();
            var outcome = await TreatyMessages.QueryPreparedAsync(connection, gid, ct);
            var status = outcome == PreparedOutcome.Committed ? StatusCodes.Status200OK : StatusCodes.Status409Conflict;
            sender._answers.Enqueue((gid, status));
            return outcome == PreparedOutcome.Committed ? Results.Ok() : Results.Conflict();
        });

        app.MapPost("/receive", async (HttpContext context) =>
        {
            using var body = await JsonDocument.ParseAsync(context.Request.Body);
            var gid = body.RootElement.GetProperty("gid").GetString()!;
            var orderId = body.RootElement.GetProperty("payload").GetProperty("orderId").GetString()!;
            var orderVisible = await database.HasOrderAsync(orderId);
            sender._deliveries.Enqueue(new Delivery(gid, context.Request.Headers["Treaty-Branch"].ToString(), orderVisible));
            return Results.Ok();
        });

        await app.StartAsync();
        sender.BaseAddress = new Uri(app.Urls.Single());
        return sender;
    }

    /// <summary>How many queryPrepared calls about <paramref name="gid"/> arrived (answered or not yet).</summary>
    public int AskedAbout(string gid) => _asked.Count(g => g == gid);

    /// <summary>The status codes queryPrepared answered about <paramref name="gid"/>, in order.</summary>
    public IReadOnlyList<int> AnswersAbout(string gid) => [.. _answers.Where(a => a.Gid == gid).Select(a => a.Status)];

    /// <summary>The message deliveries to <c>/receive</c> of <paramref name="gid"/>.</summary>
    public IReadOnlyList<Delivery> DeliveriesOf(string gid) => [.. _deliveries.Where(d => d.Gid == gid)];

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
}

/// <summary>One delivery of a message to the sender's receiver.</summary>
/// <param name="OrderVisible">Whether the sender's committed order row was readable when the message arrived.</param>
public sealed record Delivery(string Gid, string Branch, bool OrderVisible);
