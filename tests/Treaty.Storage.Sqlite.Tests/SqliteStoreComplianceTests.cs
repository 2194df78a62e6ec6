using Treaty.Core.Engine;
using Treaty.Testing;

namespace Treaty.Storage.Sqlite.Tests;

/// <summary>The shared store behaviour, on a SQLite file in a temporary directory.</summary>
public sealed class SqliteStoreComplianceTests : StoreComplianceTests
{
    private readonly TempDatabase _database = new();
    private SqliteTransactionStore? _store;

    protected override Task<ITransactionStore> CreateStoreAsync()
    {
        _store = _database.Open();
        return Task.FromResult<ITransactionStore>(_store);
    }

    protected override async Task<ITransactionStore> ReopenStoreAsync()
    {
        if (_store is not null)
        {
            await _store.DisposeAsync();
        }

        _store = _database.Open();
        return _store;
    }

    public override async Task DisposeAsync()
    {
        await base.DisposeAsync();
        if (_store is not null)
        {
            await _store.DisposeAsync();
        }

        _database.Dispose();
    }
}
