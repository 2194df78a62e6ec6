using Treaty.Client;
using Treaty.Testing;

namespace Treaty.Server.Tests.Support;

/// <summary>A participant and an in-process coordinator, shared by the tests of one class.</summary>
public sealed class ServerFixture : IAsyncLifetime
{
    public Participant Participant { get; private set; } = null!;

    public InProcessCoordinator Coordinator { get; private set; } = null!;

    public HttpClient Http => Coordinator.Http;

    public TreatyClient Client => Coordinator.Client;

    public async Task InitializeAsync()
    {
        Participant = await Participant.StartAsync();
        Coordinator = await InProcessCoordinator.StartAsync();
    }

    public async Task DisposeAsync()
    {
        try
        {
            if (Coordinator is not null)
            {
                await Coordinator.DisposeAsync();
            }
        }
        finally
        {
            if (Participant is not null)
            {
                await Participant.DisposeAsync();
            }
        }
    }
}

/// <summary>A participant alone (the coordinators are child processes the tests start).</summary>
public sealed class ParticipantFixture : IAsyncLifetime
{
    public Participant Participant { get; private set; } = null!;

    public async Task InitializeAsync() => Participant = await Participant.StartAsync();

    public async Task DisposeAsync()
    {
        if (Participant is not null)
        {
            await Participant.DisposeAsync();
        }
    }
}
