using Treaty.Testing;
using Treaty.Client.Tests.Support;
using Treaty.Core.Contracts;

namespace Treaty.Client.Tests;

/// <summary>Paging over a coordinator of its own, so the listing holds exactly what these tests submitted.</summary>
public sealed class ListingTests : IAsyncLifetime
{
    private readonly List<string> _gids = [];
    private TinyParticipant _participant = null!;
    private InProcessCoordinator _coordinator = null!;
    private TreatyClient _client = null!;

    public async Task InitializeAsync()
    {
        try
        {
            _participant = await TinyParticipant.StartAsync();
            _coordinator = await InProcessCoordinator.StartAsync(prefix: "treaty-client-tests");
            _client = new TreatyClient(_coordinator.BaseAddress);
            for (var i = 0; i < 5; i++)
            {
                var gid = TreatyFixture.NewGid($"list{i}");
                _gids.Add(gid);
                await _client.Saga(gid).Step("s1", _participant.Ok, _participant.Ok).SubmitAsync(TimeSpan.FromSeconds(10));
            }
        }
        catch
        {
            await DisposeAsync(); // xunit does not dispose a test whose InitializeAsync failed
            throw;
        }
    }

    /// <summary>Idempotent: it also runs when <see cref="InitializeAsync"/> fails.</summary>
    public async Task DisposeAsync()
    {
        var (client, coordinator, participant) = (_client, _coordinator, _participant);
        (_client, _coordinator, _participant) = (null!, null!, null!);
        client?.Dispose();
        try
        {
            if (coordinator is not null)
            {
                await coordinator.DisposeAsync();
            }
        }
        finally
        {
            if (participant is not null)
            {
                await participant.DisposeAsync();
            }
        }
    }

    [Fact]
    public async Task ListAsync_WithLimit2_ReturnsTwoItemsAndACursorToTheNextPage()
    {
        var first = await _client.ListAsync(new TransactionListQuery { Limit = 2 });

        first.Items.Count.ShouldBe(2);
        first.NextCursor.ShouldNotBeNullOrEmpty();
        var second = await _client.ListAsync(new TransactionListQuery { Limit = 2, Cursor = first.NextCursor });
        second.Items.Count.ShouldBe(2);
        second.Items.Select(i => i.Gid).ShouldNotContain(g => first.Items.Any(f => f.Gid == g));
    }

    [Fact]
    public async Task ListAllAsync_WithLimit2OverFiveTransactions_YieldsEachOnce()
    {
        var seen = new List<TransactionSummaryView>();
        await foreach (var item in _client.ListAllAsync(new TransactionListQuery { Limit = 2 }))
        {
            seen.Add(item);
        }

        seen.Select(i => i.Gid).ShouldBe(Enumerable.Reverse(_gids)); // newest first, each once
        seen.ShouldAllBe(i => i.Protocol == "saga" && i.Status == "committed" && i.Branches == 1);
    }

    [Fact]
    public async Task ListAllAsync_WithStatusFilter_YieldsOnlyMatches()
    {
        var aborted = TreatyFixture.NewGid("list-aborted");
        await _client.Saga(aborted).Step("s1", _participant.Conflict, _participant.Ok).SubmitAsync(TimeSpan.FromSeconds(10));

        var seen = new List<string>();
        await foreach (var item in _client.ListAllAsync(new TransactionListQuery { Status = "aborted", Limit = 2 }))
        {
            seen.Add(item.Gid);
        }

        seen.ShouldBe([aborted]);
    }

    [Fact]
    public async Task ListAllAsync_CancelledToken_ThrowsOperationCanceled()
    {
        using var cancelled = new CancellationTokenSource();
        await cancelled.CancelAsync();

        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var _ in _client.ListAllAsync(new TransactionListQuery { Limit = 2 }, cancelled.Token))
            {
            }
        });
    }
}
